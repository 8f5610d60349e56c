"""The API docs page's vendor files: Swagger UI as the `swagger-ui-py` package ships it, served from the
installed package (no network, no CDN). The page itself is `web/docs/` (served at `/docs/` by the
dashboard's static mount); it loads these from `/docs/vendor/<name>`."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from station_wf.errors import not_found

VENDOR_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui-standalone-preset.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "LICENSE": "text/plain",
}
"""The only files served (a fixed list: no path from the URL reaches the disk)."""


def vendor_dir() -> Path | None:
    """The package's static folder, found without importing it (its `__init__` pulls in its web glue)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "static"


async def docs_vendor(request: Request, state: Any) -> Response:
    name = request.path_params["name"]
    folder = vendor_dir()
    if name not in VENDOR_FILES or folder is None or not (folder / name).is_file():
        raise not_found("docs asset", name)
    return FileResponse(folder / name, media_type=VENDOR_FILES[name], headers={"Cache-Control": "public, max-age=3600"})

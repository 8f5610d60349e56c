// The API docs page: Swagger UI over /api/v1/openapi.json. The document sits behind the API's bearer
// token when the daemon has tokens: the page uses the dashboard's token (same sessionStorage key) and
// asks for one when the daemon answers 401. The token goes in the Authorization header, never a URL.
(function () {
  'use strict';
  const TOKEN_KEY = 'station.token';
  const SPEC = '/api/v1/openapi.json';
  const token = () => { try { return sessionStorage.getItem(TOKEN_KEY) || ''; } catch { return ''; } };
  const form = document.getElementById('token-form');

  function withToken(req) {
    const t = token();
    if (t && (req.url.startsWith(location.origin + '/') || req.url.startsWith('/'))) {  // our own origin only
      req.headers = req.headers || {};
      if (!req.headers.Authorization) req.headers.Authorization = 'Bearer ' + t;
    }
    return req;
  }

  async function load() {
    const headers = token() ? { Authorization: 'Bearer ' + token() } : {};
    const resp = await fetch(SPEC, { headers });
    if (resp.status === 401) {
      form.hidden = false;
      document.getElementById('token-error').textContent = token() ? 'that token was refused' : '';
      return;
    }
    if (!resp.ok) {
      document.getElementById('swagger-ui').textContent = 'could not load ' + SPEC + ': HTTP ' + resp.status;
      return;
    }
    form.hidden = true;
    window.ui = SwaggerUIBundle({
      spec: await resp.json(), dom_id: '#swagger-ui', deepLinking: true, displayRequestDuration: true,
      requestInterceptor: withToken, persistAuthorization: false,
    });
  }

  form.addEventListener('submit', (ev) => {
    ev.preventDefault();
    try { sessionStorage.setItem(TOKEN_KEY, document.getElementById('token').value.trim()); } catch { /* private mode */ }
    load();
  });
  load();
}());

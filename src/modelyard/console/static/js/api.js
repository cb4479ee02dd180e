// The admin API through the console's session: the cookie goes by itself (same origin),
// a change also sends the session's CSRF token in X-CSRF-Token.

let session = null;

export class ApiError extends Error {
  constructor(status, message, code) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

async function errorOf(response) {
  let message = `${response.status} ${response.statusText}`;
  let code = null;
  try {
    const body = await response.json();
    if (body && body.error) {
      message = body.error.message || message;
      code = body.error.code;
    }
  } catch (_) { /* not JSON */ }
  return new ApiError(response.status, message, code);
}

function toLogin() {
  window.location.assign("login");
}

/** Who is logged in and the session's CSRF token (from /console/api/session). */
export async function loadSession() {
  const response = await fetch("api/session", { credentials: "same-origin" });
  if (response.status === 401) {
    toLogin();
    throw await errorOf(response);
  }
  if (!response.ok) throw await errorOf(response);
  session = await response.json();
  return session;
}

async function call(method, path, body) {
  const headers = { Accept: "application/json" };
  if (method !== "GET") headers["X-CSRF-Token"] = session.csrf_token;
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(session.admin_api + path, {
    method, headers, credentials: "same-origin",
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.status === 401) {
    toLogin();
  }
  if (!response.ok) throw await errorOf(response);
  return response.json();
}

export const api = {
  get: (path) => call("GET", path),
  post: (path, body) => call("POST", path, body),
  put: (path, body) => call("PUT", path, body),
};

/** End the session on the server, then go to the login page; throws when the server did
 * not end it (the person must not believe they logged out while the session lives on). */
export async function logout() {
  const response = await fetch("api/logout", {
    method: "POST", credentials: "same-origin",
    headers: { "X-CSRF-Token": session ? session.csrf_token : "" },
  });
  if (!response.ok && response.status !== 401) throw await errorOf(response);  // 401: gone
  let elsewhere = null;  // after single sign-on: the identity provider's logout
  if (response.ok) {
    try { elsewhere = (await response.json()).sso_logout; } catch (_) { /* ended anyway */ }
  }
  if (typeof elsewhere === "string" && /^https?:\/\//.test(elsewhere)) {
    window.location.assign(elsewhere);
  } else {
    toLogin();
  }
}

/** A path segment, escaped. */
export function seg(text) {
  return encodeURIComponent(text);
}

// The login page: a token in, a session cookie out (the token is not kept by the page).

const form = document.getElementById("login");
const error = document.getElementById("error");
let csrf = null;

// What a failed single sign-on comes back with (?error=…): fixed sentences, so that
// nobody can put words on this page through a link; the server's log has the details.
const SSO_ERRORS = {
  sso_state: "The sign-in could not be matched to this browser: it took longer than "
    + "10 minutes, was started again in another tab, or was not started here. Try again.",
  sso_denied: "The identity provider did not sign you in (access denied).",
  sso_idp_error: "The identity provider answered with an error",
  sso_refused: "The identity provider signed you in, but this server refused what it sent. "
    + "An administrator finds the reason in the server's log.",
  sso_unavailable: "The identity provider cannot be reached now. Try again shortly.",
  sso_limited: "Too many failed logins from this address. Wait a few minutes.",
  sso_sessions_unavailable: "The console cannot reach the store its sessions are kept in "
    + "(Redis) just now. Try again in a moment.",
};

function showSsoError() {
  const params = new URLSearchParams(window.location.search);
  const code = params.get("error");
  if (!code || !Object.hasOwn(SSO_ERRORS, code)) return;
  const idp = params.get("idp");
  show(code === "sso_idp_error" && idp && /^[a-z_]{1,40}$/.test(idp)
    ? `${SSO_ERRORS[code]} (${idp}).` : SSO_ERRORS[code]);
}

async function prepare() {
  const response = await fetch("api/login", { credentials: "same-origin" });
  const body = await response.json();
  csrf = body.csrf_token;
  document.getElementById("oidc-help").hidden = !body.oidc;
  if (body.oidc) document.querySelector("label[for=token]").textContent =
    "Personal access token or OpenID Connect token";
  if (body.sso) {
    document.getElementById("sso-help").textContent = `at ${body.sso.issuer}`;
    document.getElementById("sso-block").hidden = false;
  }
}

function show(message) {
  error.textContent = message;
  error.hidden = false;
}

form.addEventListener("submit", async (event) => {
  event.preventDefault();
  error.hidden = true;
  const field = document.getElementById("token");
  const token = field.value.trim();
  const button = document.getElementById("submit");
  button.disabled = true;
  const send = () => fetch("api/login", {
    method: "POST", credentials: "same-origin",
    headers: { "Content-Type": "application/json", "X-CSRF-Token": csrf },
    body: JSON.stringify({ token }),
  });
  try {
    if (!csrf) await prepare();
    let response = await send();
    if (response.status === 403) {  // the login token expired (10 min): a fresh one, once
      await prepare();
      response = await send();
    }
    if (response.ok) {
      field.value = "";
      window.location.assign("./");
      return;
    }
    let message = `${response.status} ${response.statusText}`;
    try { message = (await response.json()).error.message; } catch (_) { /* keep */ }
    if (response.status === 429) message = `Too many failed logins. ${message}`;
    if (response.status === 403) await prepare();  // still refused: fresh for the next try
    show(message);
  } catch (e) {
    show(String(e));
  } finally {
    button.disabled = false;
  }
});

showSsoError();
prepare().catch((e) => show(`cannot reach the server: ${e}`));

// The login page: a token in, a session cookie out (the token is not kept by the page).

const form = document.getElementById("login");
const error = document.getElementById("error");
let csrf = null;

async function prepare() {
  const response = await fetch("api/login", { credentials: "same-origin" });
  const body = await response.json();
  csrf = body.csrf_token;
  document.getElementById("oidc-help").hidden = !body.oidc;
  if (body.oidc) document.querySelector("label[for=token]").textContent =
    "Personal access token or OpenID Connect token";
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

prepare().catch((e) => show(`cannot reach the server: ${e}`));

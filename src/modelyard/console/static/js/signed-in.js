// After single sign-on: move on to the console from this page of the console's own
// site, so that the browser sends the SameSite=Strict session cookie (a redirect that
// continued the identity provider's navigation would arrive without it).
window.location.replace(document.getElementById("onward").href);

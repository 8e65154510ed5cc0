// The API's documentation page: Swagger UI (vendored, swagger-ui-bundle.js) over the schema the
// page names, for a signed-in person. Nothing is fetched from outside this server.
"use strict";
window.addEventListener("DOMContentLoaded", () => {
  const node = document.getElementById("swagger-ui");
  window.ui = SwaggerUIBundle({
    url: node.dataset.schema,
    domNode: node,
    deepLinking: true,
    validatorUrl: null,
    presets: [SwaggerUIBundle.presets.apis],
    layout: "BaseLayout",
  });
});

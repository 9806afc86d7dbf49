// The widget page's own script: fills in the embed snippet for this server's address.
(() => {
  "use strict";
  const snippet = document.getElementById("snippet");
  if (!snippet) return;
  const origin = location.origin;
  snippet.textContent =
    `<script src="${origin}/embed.js"></script>\n` +
    `<trail-trending src="${origin}" limit="10"></trail-trending>`;
})();

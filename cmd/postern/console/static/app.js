// Postern console: small helpers for every page (no inline script).
'use strict';
document.addEventListener('click', function (ev) {
  var b = ev.target.closest('button[name="op"][value="delete"]');
  if (b && !window.confirm('Delete the selected messages?')) {
    ev.preventDefault();
  }
});

// The login page's one behaviour, in a file: the pages' policy runs no inline script.
"use strict";
if (new URLSearchParams(location.search).has("error")) document.getElementById("error").hidden = false;

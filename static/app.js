// Progressive enhancement: drag-and-drop and a list of chosen files; the form works without it.
(function () {
  const zone = document.getElementById("drop-zone");
  const input = document.getElementById("file-input");
  const list = document.getElementById("chosen");
  if (!zone || !input) return;
  function show() {
    list.textContent = "";
    for (const file of input.files) {
      const item = document.createElement("li");
      item.textContent = file.name + " (" + Math.round(file.size / 1024) + " KB)";
      list.appendChild(item);
    }
  }
  input.addEventListener("change", show);
  ["dragenter", "dragover"].forEach((type) => zone.addEventListener(type, (event) => {
    event.preventDefault();
    zone.classList.add("over");
  }));
  ["dragleave", "drop"].forEach((type) => zone.addEventListener(type, () => zone.classList.remove("over")));
  zone.addEventListener("drop", (event) => {
    event.preventDefault();
    if (event.dataTransfer && event.dataTransfer.files.length) {
      input.files = event.dataTransfer.files;
      show();
    }
  });
})();

// The review page's keys: k keep, x exclude, 1-9 choose a class, r relabel, n/p next/previous, u undo.
(function () {
  const select = document.getElementById("relabel-to");
  if (!select) return;
  const click = (id) => { const el = document.getElementById(id); if (el && !el.disabled) el.click(); };
  document.addEventListener("keydown", (event) => {
    if (event.ctrlKey || event.metaKey || event.altKey || event.target.tagName === "INPUT") return;
    const digit = Number(event.key);
    if (digit >= 1 && digit <= select.options.length) { select.selectedIndex = digit - 1; return; }
    const actions = { k: "keep", x: "exclude", r: "relabel", n: "next", p: "previous", u: "undo" };
    if (actions[event.key]) { event.preventDefault(); click(actions[event.key]); }
  });
})();

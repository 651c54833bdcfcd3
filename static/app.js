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

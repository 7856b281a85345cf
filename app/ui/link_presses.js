(link, target, button) => {
  // A click on a link to link + VALUE becomes a press of the hidden button #button, with
  // VALUE in the hidden box #target (app/ui/branches.py, app/ui/attachments.py,
  // app/ui/checks.py).
  document.addEventListener("click", (event) => {
    const found = event.target.closest && event.target.closest(`a[href^="${link}"]`);
    if (!found) return;
    event.preventDefault();
    event.stopPropagation();
    const box = document.querySelector(`#${target} textarea, #${target} input`);
    box.value = found.getAttribute("href").slice(link.length);
    box.dispatchEvent(new Event("input", { bubbles: true }));
    document.querySelector(`#${button}`).click();
  }, true);
};

// Three panels, one visible, chosen by the address's #fragment: links, the back button and bookmarks
// work without any script state, and each panel can be linked to (e.g. /#status).

const PANELS = ["speak", "voices", "status"];

export function initTabs() {
  const show = () => {
    const name = PANELS.includes(location.hash.slice(1)) ? location.hash.slice(1) : "speak";
    for (const panel of document.querySelectorAll("[data-panel]")) panel.hidden = panel.dataset.panel !== name;
    for (const link of document.querySelectorAll("[data-tab]")) {
      if (link.dataset.tab === name) link.setAttribute("aria-current", "page");
      else link.removeAttribute("aria-current");
    }
    return name;
  };
  window.addEventListener("hashchange", () => {
    show();
    // Keyboard and screen-reader users land on the panel they asked for, not back at the nav.
    document.getElementById("main").focus({ preventScroll: true });
  });
  show();
}

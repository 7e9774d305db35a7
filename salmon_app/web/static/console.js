// vxgate console: optional comforts only (every flow works without JavaScript).
// "Select all" for the bulk form, and a confirmation before buttons marked data-confirm.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("input.select-all").forEach(function (box) {
    box.addEventListener("change", function () {
      var form = box.closest("form");
      form.querySelectorAll("input[type=checkbox][name=id]").forEach(function (item) { item.checked = box.checked; });
    });
  });
  document.querySelectorAll("[data-confirm]").forEach(function (button) {
    button.addEventListener("click", function (event) {
      if (!window.confirm(button.getAttribute("data-confirm"))) { event.preventDefault(); }
    });
  });
});

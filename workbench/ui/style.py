"""The app's stylesheet and the click script that makes chips in HTML panels navigate."""

CSS = """
.wb-msg { padding: 8px 12px; border-radius: 6px; margin: 4px 0; font-size: 14px; }
.wb-info { background: #e7f5ff; color: #1864ab; }
.wb-warn { background: #fff4e6; color: #a64b00; border-left: 4px solid #f08c00; }
.wb-error { background: #fff5f5; color: #c92a2a; border-left: 4px solid #e03131; }
.wb-empty { color: #868e96; font-style: italic; margin: 4px 0; }
.wb-head { padding: 4px 2px 8px; }
.wb-fid { color: #868e96; font-size: 13px; text-transform: uppercase; letter-spacing: .05em; }
.wb-label { font-size: 26px; font-weight: 650; line-height: 1.2; margin: 2px 0; }
.wb-meta { color: #495057; font-size: 14px; }
.wb-stats { display: flex; flex-wrap: wrap; gap: 6px; margin-top: 8px; }
.wb-stat { background: #f1f3f5; border-radius: 12px; padding: 2px 10px; font-size: 13px; }
.wb-stat i { color: #868e96; font-style: normal; margin-right: 4px; }
.wb-card { border: 1px solid #e9ecef; border-radius: 8px; padding: 10px 12px; margin: 6px 0;
  background: #fff; }
.wb-card h3 { margin: 0 0 6px; font-size: 15px; color: #343a40; }
.wb-group { margin: 10px 0 4px; font-size: 13px; color: #868e96; text-transform: uppercase; }
.wb-ex { padding: 6px 0; border-bottom: 1px solid #f1f3f5; }
.wb-exmeta { font-size: 12px; color: #868e96; margin-bottom: 2px; }
.wb-extext, .wb-report { font-family: ui-monospace, Menlo, monospace; font-size: 13px;
  line-height: 1.7; white-space: pre-wrap; color: #212529; }
.wb-extext span, .wb-report span { border-radius: 3px; }
.wb-center { outline: 2px solid #e8590c; }
.wb-imgtok { color: #1971c2; }
.wb-chips { display: flex; flex-wrap: wrap; gap: 6px; align-items: center; }
.wb-chips h4 { flex-basis: 100%; }
a.wb-chip { background: #fff4e6; color: #a64b00; border: 1px solid #ffd8a8; border-radius: 14px;
  padding: 2px 10px; font-size: 13px; text-decoration: none; cursor: pointer; }
a.wb-chip:hover { background: #ffe8cc; }
a.wb-study { color: #1971c2; text-decoration: none; cursor: pointer; }
.wb-fig { margin: 0; text-align: center; }
.wb-fig img { max-width: 100%; border-radius: 6px; }
.wb-fig figcaption { font-size: 12px; color: #868e96; }
.wb-table { border-collapse: collapse; font-size: 12px; margin: 6px 0; border: none !important; }
.wb-table th, .wb-table td { border: none !important; border-bottom: 1px solid #e9ecef !important;
  padding: 2px 8px; text-align: left; background: none; }
.wb-table caption { text-align: left; color: #868e96; font-size: 12px; }
.wb-tiles { display: flex; flex-wrap: wrap; gap: 8px; margin: 6px 0 10px; }
.wb-tile { border: 1px solid #e9ecef; border-radius: 8px; padding: 6px 12px; min-width: 110px; }
.wb-tile i { display: block; font-style: normal; font-size: 11px; color: #868e96;
  text-transform: uppercase; letter-spacing: .04em; }
.wb-tile b { font-size: 18px; font-weight: 600; color: #212529; }
.wb-facts th { color: #868e96; font-weight: 500; }
.wb-numbers summary { cursor: pointer; color: #1971c2; font-size: 12px; }
.wb-curves { display: flex; flex-wrap: wrap; gap: 12px; }
.wb-curve { flex: 1 1 320px; max-width: 380px; }
.wb-sec { margin-bottom: 6px; }
.wb-seclabel { display: block; font-family: system-ui, sans-serif; font-size: 11px;
  color: #868e96; text-transform: uppercase; letter-spacing: .05em; }
.wb-thumbs { display: flex; flex-wrap: wrap; gap: 8px; margin-top: 8px; }
.wb-thumbs .wb-fig { max-width: 200px; }
.wb-bar:hover { opacity: .75; }
.wb-patches { display: flex; flex-wrap: wrap; gap: 10px; margin: 4px 0 8px; }
.wb-patch { text-align: center; font-size: 12px; line-height: 1.3; }
.wb-patch img { display: block; margin: 0 auto 2px; border-radius: 4px; max-width: 112px; }
.wb-nocrop { width: 96px; height: 64px; background: #f1f3f5; color: #868e96; font-size: 11px;
  display: flex; align-items: center; justify-content: center; border-radius: 4px; }
.wb-why { color: #868e96; font-size: 12px; margin-top: 2px; }
.wb-labels summary { cursor: pointer; color: #1971c2; font-size: 13px; margin-top: 6px; }
.wb-dupes { color: #a64b00; }
.wb-stack { position: relative; display: inline-block; line-height: 0; }
.wb-stack img { max-width: 100%; border-radius: 6px; }
.wb-stack .wb-layer { position: absolute; left: 0; top: 0; width: 100%; height: 100%; }
.wb-heatctl { display: flex; gap: 14px; justify-content: center; font-size: 12px;
  color: #495057; margin: 4px 0; align-items: center; }
.wb-heatctl input[type=range] { width: 110px; vertical-align: middle; }
.wb-strip { display: flex; gap: 8px; overflow-x: auto; padding-bottom: 4px; }
a.wb-thumb { flex: 0 0 auto; text-align: center; font-size: 11px; color: #495057;
  text-decoration: none; cursor: pointer; }
a.wb-thumb img { display: block; width: 150px; border-radius: 4px; margin-bottom: 2px; }
a.wb-thumb:hover img { outline: 2px solid #e8590c; }
.wb-sqlwrap { overflow-x: auto; max-height: 560px; overflow-y: auto; }
.wb-sqlwrap table { white-space: nowrap; }
.wb-cell { max-width: 36em; overflow-x: auto; white-space: nowrap; }
.wb-exports a.wb-download { margin-right: 4px; font-weight: 600; color: #1971c2; }
"""

# Chips carry data-feature / data-study; a click becomes a Gradio 'click' event with that data
# (a study chip may carry the feature to colour it by). The heatmap's overlay toggle and
# opacity slider act on the page alone.
CLICK_JS = """
element.addEventListener('click', (e) => {
  const a = e.target.closest('[data-feature],[data-study]');
  if (!a) return;
  e.preventDefault();
  const d = a.dataset;
  if (d.study !== undefined) trigger('click', {study: d.study, feature: d.feature ?? null});
  else trigger('click', {feature: d.feature});
});
const heat = (e) => {
  const t = e.target;
  const fig = t.closest('.wb-heat');
  if (!fig) return;
  const layer = fig.querySelector('.wb-layer');
  if (t.classList.contains('wb-opacity')) layer.style.opacity = t.value / 100;
  if (t.classList.contains('wb-toggle')) layer.style.display = t.checked ? '' : 'none';
};
element.addEventListener('input', heat);
element.addEventListener('change', heat);
"""

# Puts a view's query string (workbench.ui.links.query) into the address bar.
URL_JS = """
(q) => {
  if (q === null || q === undefined) return;
  const target = window.location.pathname + q;
  if (target !== window.location.pathname + window.location.search) {
    window.history.pushState(null, '', target);
  }
}
"""

# In the browser alone: a click on a tab header puts that tab's view into the address bar
# (the feature or study on screen, ?tab=runs, ...); Back and Forward reload the view the
# address names. Programmatic tab switches (a chip, a deep link) set the address themselves.
HEAD = """<script>
(() => {
  const value = (sel) => {
    const el = document.querySelector(sel);
    return el ? String(el.value || '').trim() : '';
  };
  const number = (text) => { const m = /^#?(\\d+)/.exec(text); return m ? m[1] : ''; };
  document.addEventListener('click', (e) => {
    const t = e.target.closest('[role=tab][data-tab-id]');
    if (!t || !document.getElementById('wb-banner')) return;
    const id = t.dataset.tabId, p = new URLSearchParams();
    const f = number(value('#wb-fnum input'));
    const s = number(value('#wb-studyid input, #wb-studyid textarea'));
    const sf = number(value('#wb-sfeat input'));
    const q = value('#wb-search input, #wb-search textarea');
    if (id === 'feature' && f) p.set('feature', f);
    else if (id === 'study' && s) { p.set('study', s); if (sf) p.set('feature', sf); }
    else if (id === 'features' && q) { p.set('tab', id); p.set('q', q); }
    else if (id !== 'features') p.set('tab', id);
    const target = window.location.pathname + (p.toString() ? '?' + p : '');
    if (target !== window.location.pathname + window.location.search) {
      window.history.pushState(null, '', target);
    }
  });
  window.addEventListener('popstate', () => window.location.reload());
})();
</script>"""

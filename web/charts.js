// The page's panels: time series (uPlot, vendored), bar lists, tables and stat tiles. Each draws
// into a container and can be redrawn with new data; raw values ride along in `data-value`
// (`data-series` for a chart) attributes so what is shown can be checked against the engine.

export const COLORS = ['#73bf69', '#f2cc0c', '#5794f2', '#ff9830', '#f2495c', '#b877d9', '#8ab8ff', '#96d98d', '#ffb357', '#ca95e5'];

/** A time series chart over window starts (ms), redrawn in place; rebuilt when its series change. */
export class TimeChart {
  /**
   * @param {HTMLElement} container
   * @param {{percentSeries?: string[], money?: boolean}} options
   */
  constructor(container, options = {}) {
    this.container = container;
    this.options = options;
    this.plot = null;
    this.labels = '';
    new ResizeObserver(() => this.resize()).observe(container);
  }

  size() {
    // The plot's own height (uPlot adds its legend below): shorter on a phone.
    return { width: Math.max(this.container.clientWidth, 100), height: window.innerWidth < 600 ? 160 : 200 };
  }

  resize() {
    if (this.plot) this.plot.setSize(this.size());
  }

  /**
   * @param {number[]} xs window starts in ms, ascending
   * @param {{label: string, values: (number|null)[], percent?: boolean}[]} series
   */
  update(xs, series) {
    if (xs.length === 0 || series.length === 0) {
      if (this.plot) this.plot.destroy();
      this.plot = null;
      this.labels = '';
      this.container.innerHTML = '<div class="empty">no data yet</div>';
      delete this.container.dataset.series;
      return;
    }
    // What is drawn, raw: the window starts (ms) and each series' values, each as the exact
    // shortest text of its number.
    this.container.dataset.series = JSON.stringify({
      starts: xs,
      series: series.map((s) => ({ label: s.label, values: s.values.map((v) => (v === null ? null : String(v))) })),
    });
    const data = [xs.map((x) => x / 1000), ...series.map((s) => s.values)];
    const labels = series.map((s) => `${s.label}${s.percent ? '%' : ''}`).join('\u0000');
    if (this.plot && labels === this.labels) {
      this.plot.setData(data);
      return;
    }
    if (this.plot) this.plot.destroy();
    this.container.innerHTML = '';
    this.labels = labels;
    const money = this.options.money;
    const hasPercent = series.some((s) => s.percent);
    const axis = { stroke: '#8e9297', grid: { stroke: '#2c3036' }, ticks: { stroke: '#2c3036' } };
    const axes = [
      { ...axis },
      { ...axis, size: 70, values: (u, ticks) => ticks.map((t) => (money ? `$${compact(t)}` : compact(t))) },
    ];
    if (hasPercent) {
      axes.push({ ...axis, scale: '%', side: 1, size: 50, grid: { show: false }, values: (u, ticks) => ticks.map((t) => `${(t * 100).toFixed(0)}%`) });
    }
    const opts = {
      ...this.size(),
      cursor: { drag: { x: false, y: false } },
      scales: { x: { time: true }, ...(hasPercent ? { '%': { range: (u, min, max) => [0, Math.max(max, 0.01)] } } : {}) },
      axes,
      series: [
        {},
        ...series.map((s, i) => ({
          label: s.label,
          stroke: COLORS[i % COLORS.length],
          width: 2,
          scale: s.percent ? '%' : 'y',
          points: { show: xs.length < 30 },
          value: (u, v) => (v === null || v === undefined ? '–' : s.percent ? `${(v * 100).toFixed(1)}%` : money ? `$${compact(v)}` : compact(v)),
        })),
      ],
    };
    this.plot = new uPlot(opts, data, this.container);
  }
}

/** A short number for an axis: 1234 -> "1.2k". */
function compact(x) {
  const a = Math.abs(x);
  if (a >= 1e9) return `${+(x / 1e9).toFixed(1)}G`;
  if (a >= 1e6) return `${+(x / 1e6).toFixed(1)}M`;
  if (a >= 1e3) return `${+(x / 1e3).toFixed(1)}k`;
  return `${+x.toFixed(2)}`;
}

function element(tag, className, text) {
  const e = document.createElement(tag);
  if (className) e.className = className;
  if (text !== undefined) e.textContent = text;
  return e;
}

/**
 * A table: columns `{label, field, num?, format?}`; rows `{key, values}` with raw values by field.
 * Each row carries `data-key`, each cell `data-field` and `data-value` (the raw value).
 */
export function table(container, columns, rows) {
  if (rows.length === 0) {
    container.innerHTML = '<div class="empty">no rows yet</div>';
    return;
  }
  const t = element('table');
  const head = t.createTHead().insertRow();
  for (const c of columns) head.appendChild(element('th', c.num ? 'num' : '', c.label));
  const body = t.createTBody();
  for (const row of rows) {
    const tr = body.insertRow();
    tr.dataset.key = row.key;
    for (const c of columns) {
      const value = row.values[c.field];
      const td = element('td', c.num ? 'num' : '', c.format ? c.format(value, row.values) : String(value ?? ''));
      td.dataset.field = c.field;
      if (value !== undefined && value !== null) td.dataset.value = String(value);
      tr.appendChild(td);
    }
  }
  container.replaceChildren(t);
}

/** A bar list: `{key, label, value}` with `format(value)`, bars scaled to the largest value. */
export function bars(container, items, format, empty = 'no rows yet') {
  if (items.length === 0) {
    container.replaceChildren(element('div', 'empty', empty));
    return;
  }
  const max = Math.max(...items.map((i) => Math.abs(i.value)), 1);
  const parts = [];
  items.forEach((item, n) => {
    const label = element('span', 'label', item.label);
    const bar = element('div', 'bar');
    bar.style.width = `${(100 * Math.abs(item.value)) / max}%`;
    bar.style.background = COLORS[n % COLORS.length];
    const value = element('span', 'num', format(item.value));
    value.dataset.key = item.key;
    value.dataset.value = String(item.value);
    parts.push(label, bar, value);
  });
  container.replaceChildren(...parts);
}

/** Stat tiles: `{key, label, value, format}`. */
export function stats(container, items) {
  const parts = items.map((item) => {
    const tile = element('div', 'stat');
    tile.dataset.stat = item.key;
    if (item.value !== undefined && item.value !== null) tile.dataset.value = String(item.value);
    tile.append(element('div', 'label', item.label), element('div', 'value', item.format(item.value)));
    return tile;
  });
  container.replaceChildren(...parts);
}

// The dashboard page: four dashboards over one live Store (see store.js), the visible one
// redrawn on every completed timestamp. `document.body.dataset.time` is the completed timestamp
// the visible dashboard shows (each section keeps the time it was last drawn at in its own
// `data-time`).

import { TimeChart, table, bars, stats } from './charts.js';
import * as fmt from './format.js';
import { connect } from './store.js';

const FIELDS = ['clicks', 'purchases', 'units', 'revenue_cents'];
/** Windows shown by the time series. */
const CHART_WINDOWS = 60;

function zero() {
  return { clicks: 0, purchases: 0, units: 0, revenue_cents: 0 };
}
function add(sum, fields) {
  for (const f of FIELDS) sum[f] += fields[f] ?? 0;
  return sum;
}
function sumRows(rows) {
  return rows.reduce((s, r) => add(s, r.fields), zero());
}
/** Ties broken by key, so equal revenues always list in the same order. */
function byRevenue(a, b) {
  return (b.fields.revenue_cents - a.fields.revenue_cents) || (a.sortKey < b.sortKey ? -1 : a.sortKey > b.sortKey ? 1 : 0);
}
function withSortKey(rows, key) {
  for (const r of rows) r.sortKey = key(r);
  return rows;
}
function numeric(a, b) {
  return Number(a) - Number(b);
}
/** A segment's label: "25-34 F". */
function segment(tags) {
  return `${tags.age_band} ${tags.gender}`;
}

/**
 * Window rows grouped by window start and a group label: returns the last CHART_WINDOWS starts
 * and, per group, the summed fields per start (null where the group has no row).
 */
function perWindow(rows, group) {
  const starts = [...new Set(rows.map((r) => r.window))].sort(numeric).slice(-CHART_WINDOWS);
  const index = new Map(starts.map((s, i) => [s, i]));
  const groups = new Map();
  for (const r of rows) {
    const i = index.get(r.window);
    if (i === undefined) continue;
    const g = group(r);
    if (g === null) continue;
    let sums = groups.get(g);
    if (!sums) groups.set(g, (sums = starts.map(() => null)));
    sums[i] = add(sums[i] ?? zero(), r.fields);
  }
  return { starts, groups };
}
function values(sums, field) {
  return sums.map((s) => (s === null ? null : s[field]));
}

const moneyColumn = { label: 'revenue', field: 'revenue_cents', num: true, format: fmt.money };
const countColumns = [
  { label: 'purchases', field: 'purchases', num: true, format: fmt.count },
  { label: 'units', field: 'units', num: true, format: fmt.count },
  { label: 'clicks', field: 'clicks', num: true, format: fmt.count },
];
const conversionColumn = { label: 'conversion', field: 'conversion', num: true, format: fmt.percent };

function totalsStats(container, totals) {
  stats(container, [
    { key: 'revenue_cents', label: 'revenue', value: totals.revenue_cents, format: fmt.money },
    { key: 'purchases', label: 'purchases', value: totals.purchases, format: fmt.count },
    { key: 'units', label: 'units', value: totals.units, format: fmt.count },
    { key: 'clicks', label: 'clicks', value: totals.clicks, format: fmt.count },
    { key: 'conversion', label: 'conversion', value: fmt.conversion(totals), format: fmt.percent },
    {
      key: 'order_value_cents',
      label: 'average order',
      value: totals.purchases > 0 ? Math.round(totals.revenue_cents / totals.purchases) : null,
      format: fmt.money,
    },
  ]);
}

/** One dashboard: its section, its charts (made once), its draw function. */
class Dashboard {
  constructor(id, draw) {
    this.section = document.getElementById(`dashboard-${id}`);
    this.charts = {};
    for (const c of this.section.querySelectorAll('[data-chart]')) {
      this.charts[c.dataset.chart] = new TimeChart(c, { money: ['revenue', 'age', 'countries'].includes(c.dataset.chart) });
    }
    this.drawFn = draw;
  }
  part(kind, name) {
    return this.section.querySelector(`[data-${kind}="${name}"]`);
  }
  draw(store) {
    this.drawFn(this, store);
    this.section.dataset.time = String(store.time);
  }
}

const dashboards = {
  purchases: new Dashboard('purchases', (d, store) => {
    totalsStats(d.part('stats', 'totals'), sumRows(store.allTime('campaign')));
    const { starts, groups } = perWindow(store.windowed('campaign'), () => 'all');
    const sums = groups.get('all') ?? [];
    d.charts.revenue.update(starts, [{ label: 'revenue', values: values(sums, 'revenue_cents').map((c) => (c === null ? null : c / 100)) }]);
    d.charts.purchases.update(starts, [
      { label: 'purchases', values: values(sums, 'purchases') },
      { label: 'units', values: values(sums, 'units') },
    ]);
    d.charts.clicks.update(starts, [
      { label: 'clicks', values: values(sums, 'clicks') },
      { label: 'conversion', values: sums.map((s) => (s === null ? null : fmt.conversion(s))), percent: true },
    ]);
    const last = starts.map((start, i) => ({ start, sums: sums[i] })).filter((w) => w.sums !== null).slice(-10).reverse();
    table(
      d.part('table', 'windows'),
      [
        { label: 'window', field: 'window', format: fmt.windowStart },
        moneyColumn,
        ...countColumns,
        conversionColumn,
        { label: 'average order', field: 'order_value_cents', num: true, format: fmt.money },
      ],
      last.map((w) => ({
        key: String(w.start),
        values: {
          window: w.start,
          ...w.sums,
          conversion: fmt.conversion(w.sums),
          order_value_cents: w.sums.purchases > 0 ? Math.round(w.sums.revenue_cents / w.sums.purchases) : null,
        },
      })),
    );
  }),

  campaigns: new Dashboard('campaigns', (d, store) => {
    const campaigns = withSortKey(store.allTime('campaign'), (r) => Number(r.tags.campaign)).sort(byRevenue);
    totalsStats(d.part('stats', 'totals'), sumRows(campaigns));
    const top5 = campaigns.slice(0, 5).map((r) => r.tags.campaign);
    const { starts, groups } = perWindow(store.windowed('campaign'), (r) => (top5.includes(r.tags.campaign) ? r.tags.campaign : null));
    d.charts.revenue.update(
      starts,
      top5.filter((c) => groups.has(c)).map((c) => ({ label: `campaign ${c}`, values: values(groups.get(c), 'revenue_cents').map((v) => (v === null ? null : v / 100)) })),
    );
    table(
      d.part('table', 'top'),
      [{ label: '#', field: 'rank', num: true }, { label: 'campaign', field: 'campaign' }, moneyColumn, ...countColumns, conversionColumn],
      campaigns.slice(0, 10).map((r, i) => ({
        key: `campaign=${r.tags.campaign}`,
        values: { rank: i + 1, campaign: r.tags.campaign, ...r.fields },
      })),
    );
    const select = d.part('filter', 'campaign');
    const chosen = select.value;
    const ids = campaigns.map((r) => r.tags.campaign).sort(numeric);
    if (select.options.length !== ids.length + 1) {
      select.replaceChildren(new Option('all', ''), ...ids.map((c) => new Option(c, c)));
      select.value = ids.includes(chosen) ? chosen : '';
    }
    const countries = chosen ? store.allTime('campaign_country').filter((r) => r.tags.campaign === chosen) : store.allTime('country');
    bars(
      d.part('bars', 'countries'),
      withSortKey(countries, (r) => r.tags.country).sort(byRevenue).slice(0, 15).map((r) => ({ key: `country=${r.tags.country}`, label: r.tags.country, value: r.fields.revenue_cents })),
      fmt.money,
    );
    const segments = chosen ? store.allTime('campaign_age_gender').filter((r) => r.tags.campaign === chosen) : store.allTime('age_gender');
    bars(
      d.part('bars', 'segments'),
      withSortKey(segments, segment).sort(byRevenue).map((r) => ({ key: segment(r.tags), label: segment(r.tags), value: r.fields.revenue_cents })),
      fmt.money,
    );
  }),

  demographics: new Dashboard('demographics', (d, store) => {
    const ages = perWindow(store.windowed('age_gender'), (r) => r.tags.age_band);
    const bands = [...ages.groups.keys()].sort();
    d.charts.age.update(ages.starts, bands.map((b) => ({ label: b, values: values(ages.groups.get(b), 'revenue_cents').map((v) => (v === null ? null : v / 100)) })));
    const genders = perWindow(store.windowed('age_gender'), (r) => r.tags.gender);
    d.charts.gender.update(genders.starts, [...genders.groups.keys()].sort().map((g) => ({ label: g, values: values(genders.groups.get(g), 'purchases') })));
    const segments = withSortKey(store.allTime('age_gender'), segment);
    bars(
      d.part('bars', 'segments'),
      [...segments].sort(byRevenue).map((r) => ({ key: segment(r.tags), label: segment(r.tags), value: r.fields.revenue_cents })),
      fmt.money,
    );
    table(
      d.part('table', 'segments'),
      [{ label: 'age band', field: 'age_band' }, { label: 'gender', field: 'gender' }, moneyColumn, ...countColumns, conversionColumn],
      segments.sort((a, b) => (a.sortKey < b.sortKey ? -1 : 1)).map((r) => ({ key: `age_band=${r.tags.age_band},gender=${r.tags.gender}`, values: { ...r.tags, ...r.fields } })),
    );
    const countries = withSortKey(store.allTime('country'), (r) => r.tags.country).sort(byRevenue);
    const top = countries.slice(0, 6).map((r) => r.tags.country);
    const byCountry = perWindow(store.windowed('country'), (r) => (top.includes(r.tags.country) ? r.tags.country : null));
    d.charts.countries.update(
      byCountry.starts,
      top.filter((c) => byCountry.groups.has(c)).map((c) => ({ label: c, values: values(byCountry.groups.get(c), 'revenue_cents').map((v) => (v === null ? null : v / 100)) })),
    );
    table(
      d.part('table', 'countries'),
      [{ label: 'country', field: 'country' }, moneyColumn, ...countColumns, conversionColumn],
      countries.map((r) => ({ key: `country=${r.tags.country}`, values: { ...r.tags, ...r.fields } })),
    );
    const select = d.part('filter', 'country');
    const chosen = select.value;
    const names = countries.map((r) => r.tags.country).sort();
    if (select.options.length !== names.length + 1) {
      select.replaceChildren(new Option('every country', ''), ...names.map((c) => new Option(c, c)));
      select.value = names.includes(chosen) ? chosen : '';
    }
    const states = withSortKey(
      store.allTime('state').filter((r) => !chosen || r.tags.country === chosen),
      (r) => `${r.tags.country}\u0000${r.tags.state}`,
    ).sort(byRevenue);
    table(
      d.part('table', 'states'),
      [{ label: 'country', field: 'country' }, { label: 'state', field: 'state' }, moneyColumn, ...countColumns, conversionColumn],
      states.map((r) => ({ key: `country=${r.tags.country},state=${r.tags.state}`, values: { ...r.tags, ...r.fields } })),
    );
  }),

  pipeline: new Dashboard('pipeline', (d, store) => {
    const p = store.pipeline ?? { counters: {}, runtime: {}, process: {} };
    const runtime = p.runtime ?? {};
    const counters = p.counters ?? {};
    const latest = store.throughput.at(-1);
    stats(d.part('stats', 'runtime'), [
      { key: 'events_in', label: 'events in', value: counters.events_in, format: fmt.count },
      { key: 'events_per_second', label: 'events per second', value: runtime.events_per_second ?? latest?.[1], format: fmt.rate },
      { key: 'consumer_lag', label: 'consumer lag', value: runtime.consumer_lag, format: fmt.count },
      { key: 'freshness_ms', label: 'freshness', value: runtime.freshness_ms, format: fmt.duration },
      { key: 'sink_retries', label: 'sink retries', value: runtime.sink_retries, format: fmt.count },
      { key: 'sink_rejected_lines', label: 'rejected lines', value: runtime.sink_rejected_lines, format: fmt.count },
    ]);
    d.charts.throughput.update(
      store.throughput.map(([t]) => t),
      store.throughput.length ? [{ label: 'events/s', values: store.throughput.map(([, v]) => v) }] : [],
    );
    const rejects = Object.entries(counters).filter(([name]) => name.startsWith('malformed_') || name.startsWith('rejected_'));
    bars(
      d.part('bars', 'rejects'),
      rejects.map(([name, value]) => ({ key: name, label: name.replace(/_/g, ' '), value })),
      fmt.count,
      'none so far',
    );
    table(
      d.part('table', 'counters'),
      [{ label: 'counter', field: 'name' }, { label: 'value', field: 'value', num: true, format: fmt.count }],
      Object.entries(counters).map(([name, value]) => ({ key: name, values: { name, value } })),
    );
    const info = { ...(p.process ?? {}), ...Object.fromEntries(Object.entries(runtime).filter(([k]) => !['events_per_second', 'consumer_lag', 'freshness_ms', 'sink_retries', 'sink_rejected_lines'].includes(k))) };
    table(
      d.part('table', 'process'),
      [{ label: 'what', field: 'name' }, { label: 'value', field: 'value' }],
      Object.entries(info).map(([name, value]) => ({ key: name, values: { name, value: typeof value === 'object' ? JSON.stringify(value) : value } })),
    );
  }),
};

let current = null;
let store = null;

function show() {
  const id = location.hash.slice(1);
  const name = id in dashboards ? id : 'purchases';
  for (const [n, d] of Object.entries(dashboards)) d.section.classList.toggle('active', n === name);
  for (const a of document.querySelectorAll('nav a')) a.classList.toggle('active', a.dataset.dashboard === name);
  current = name;
  draw();
}

function draw() {
  if (!store || store.time === null) return;
  dashboards[current].draw(store);
  document.body.dataset.time = String(store.time);
  document.getElementById('status-text').textContent = `live · at ${fmt.clock(store.time)}`;
}

function setStatus(state, detail) {
  const status = document.getElementById('status');
  status.className = `status ${state}`;
  if (state !== 'live' || !store || store.time === null) {
    document.getElementById('status-text').textContent = detail ?? (state === 'live' ? 'waiting for the next timestamp…' : `${state}…`);
  }
}

for (const select of document.querySelectorAll('select[data-filter]')) select.addEventListener('change', draw);
window.addEventListener('hashchange', show);
show();
connect((s) => {
  store = s;
  draw();
}, setStatus);

// The rows the page shows, kept in step with the engine: a snapshot from the JSON API, then the
// changes of every completed timestamp from the event stream (`/api/stream`).
//
// Exactness: the stream is opened before the snapshot is fetched, and every tick received is
// replayed over the snapshot in order, so each row ends at its value after the newest tick. The
// page claims a time (`data-time`) only once it has applied a tick at or after every snapshot's
// time (or when all snapshots agree and no tick has come since), never a mix of two timestamps.

/** The measurements whose all-time rows the page shows. */
export const ALL_TIME = ['campaign', 'age_gender', 'state', 'country', 'campaign_country', 'campaign_age_gender'];
/** The measurements whose windows the page charts, and the fields fetched for them. */
export const WINDOWED = ['campaign', 'age_gender', 'country'];
export const WINDOW_FIELDS = ['clicks', 'purchases', 'units', 'revenue_cents'];
/** Windows kept per measurement (older ones are dropped from memory). */
const KEEP_WINDOWS = 240;
/** Completed timestamps kept for the throughput chart. */
const KEEP_TICKS = 600;

function rowKey(measurement, window, tags) {
  const names = Object.keys(tags).sort();
  return `${measurement}|${window ?? 'all'}|${names.map((n) => `${n}=${tags[n]}`).join(',')}`;
}

async function getJson(url) {
  const response = await fetch(url, { cache: 'no-store' });
  if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
  return response.json();
}

/** The page's copy of the engine's rows. */
export class Store {
  constructor() {
    /** measurement -> (key -> {measurement, window, tags, fields}): all-time rows, and the
     * windows of the measurements the page charts (the others' windows are not kept). */
    this.all = new Map(ALL_TIME.map((m) => [m, new Map()]));
    this.windows = new Map(WINDOWED.map((m) => [m, new Map()]));
    /** The completed timestamp the rows are at, or null while not yet consistent. */
    this.time = null;
    this.pipeline = null;
    /** [[time_ms, events per second]] per completed timestamp since the page opened. */
    this.throughput = [];
    this.snapshotTime = 0;
    this.snapshotTimes = [];
  }

  /** Sets one row's fields (merged, so per-field window series combine), or removes it (null). */
  put(measurement, window, tags, fields) {
    const table = (window === null ? this.all : this.windows).get(measurement);
    if (!table) return;
    const key = rowKey(measurement, window, tags);
    if (fields === null || fields === undefined) {
      table.delete(key);
      return;
    }
    const row = table.get(key);
    if (row) Object.assign(row.fields, fields);
    else table.set(key, { measurement, window, tags, fields: { ...fields } });
  }

  /** Loads everything from the API (the stream must already be open). */
  async load() {
    const times = [];
    const jobs = [];
    for (const m of ALL_TIME) {
      jobs.push(getJson(`api/rows?measurement=${m}&window=all`).then((body) => {
        times.push(body.time);
        for (const row of body.rows) this.put(row.measurement, null, row.tags, row.fields);
      }));
    }
    for (const m of WINDOWED) {
      for (const f of WINDOW_FIELDS) {
        jobs.push(getJson(`api/windows?measurement=${m}&field=${f}`).then((body) => {
          times.push(body.time);
          for (const s of body.series) {
            for (const [start, value] of s.points) this.put(m, start, s.tags, { [f]: value });
          }
        }));
      }
    }
    jobs.push(getJson('api/pipeline').then((body) => {
      times.push(body.time);
      this.pipeline = body;
    }));
    await Promise.all(jobs);
    this.snapshotTimes = times.filter((t) => t !== null && t !== undefined);
    this.snapshotTime = Math.max(0, ...this.snapshotTimes);
    const agree = this.snapshotTimes.every((t) => t === this.snapshotTimes[0]);
    if (agree && this.snapshotTimes.length > 0) this.time = this.snapshotTimes[0];
  }

  /** Applies the changes of one completed timestamp. */
  apply(tick) {
    for (const c of tick.changes) this.put(c.measurement, c.window, c.tags, c.fields);
    if (tick.pipeline) {
      const before = this.pipeline;
      const eventsBefore = before?.counters?.events_in;
      const eventsNow = tick.pipeline.counters?.events_in;
      if (before && before.time < tick.time && eventsBefore !== undefined && eventsNow !== undefined) {
        const perSecond = ((eventsNow - eventsBefore) * 1000) / (tick.time - before.time);
        this.throughput.push([tick.time, perSecond]);
        if (this.throughput.length > KEEP_TICKS) this.throughput.shift();
      }
      // A tick may carry only the counters it changed: the others keep their values.
      const counters = { ...(before?.counters ?? {}), ...(tick.pipeline.counters ?? {}) };
      this.pipeline = { ...tick.pipeline, counters, time: tick.time };
    }
    if (tick.time >= this.snapshotTime) this.time = Math.max(this.time ?? 0, tick.time);
    this.prune();
  }

  /** Drops windows older than the newest KEEP_WINDOWS of each measurement. */
  prune() {
    for (const table of this.windows.values()) {
      const starts = new Set();
      for (const row of table.values()) starts.add(row.window);
      if (starts.size <= KEEP_WINDOWS) continue;
      const cutoff = [...starts].sort((a, b) => b - a)[KEEP_WINDOWS - 1];
      for (const [key, row] of table) if (row.window < cutoff) table.delete(key);
    }
  }

  /** The all-time rows of a measurement. */
  allTime(measurement) {
    return [...(this.all.get(measurement)?.values() ?? [])];
  }

  /** The window rows of a measurement (of those in WINDOWED). */
  windowed(measurement) {
    return [...(this.windows.get(measurement)?.values() ?? [])];
  }
}

/**
 * Keeps a Store live: opens the stream, loads the snapshot, replays what arrived meanwhile, and
 * calls `onChange(store)` after every applied tick; reloads on `reset` and after a reconnect.
 */
export function connect(onChange, onStatus) {
  let store = null;
  let buffer = null;
  let generation = 0;
  const source = new EventSource('api/stream');

  async function reload() {
    const mine = ++generation;
    buffer = [];
    onStatus('loading');
    const fresh = new Store();
    try {
      await fresh.load();
    } catch (e) {
      if (mine === generation) {
        onStatus('down', String(e));
        setTimeout(() => mine === generation && reload(), 2000);
      }
      return;
    }
    if (mine !== generation) return;
    for (const tick of buffer) fresh.apply(tick);
    buffer = null;
    store = fresh;
    onStatus('live');
    onChange(store);
    // Snapshots taken across a timestamp wait for its tick; should none come (the engine has
    // stopped), load again rather than wait forever.
    setTimeout(() => mine === generation && store.time === null && reload(), 3000);
  }

  source.addEventListener('open', () => reload());
  source.addEventListener('error', () => onStatus('down', 'the stream is interrupted; reconnecting'));
  source.addEventListener('reset', () => reload());
  source.addEventListener('tick', (event) => {
    const tick = JSON.parse(event.data);
    if (buffer !== null) {
      buffer.push(tick);
    } else if (store) {
      store.apply(tick);
      onChange(store);
    }
  });
  return source;
}

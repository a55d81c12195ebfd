// How numbers read on the page. Fixed formats (not the browser's locale), so what a test reads is
// what it computes: money from integer cents, counts with thousands separators.

/** Groups the digits of a non-negative integer string by thousands. */
function group(digits) {
  return digits.replace(/\B(?=(\d{3})+(?!\d))/g, ',');
}

/** An integer count: 1234567 -> "1,234,567". */
export function count(n) {
  if (n === undefined || n === null || !Number.isFinite(n)) return '–';
  const sign = n < 0 ? '-' : '';
  return sign + group(String(Math.trunc(Math.abs(n))));
}

/** Integer cents as money: 123456 -> "$1,234.56" (exact: no floating point on the cents). */
export function money(cents) {
  if (cents === undefined || cents === null || !Number.isFinite(cents)) return '–';
  const sign = cents < 0 ? '-' : '';
  const abs = Math.abs(Math.trunc(cents));
  const whole = Math.floor(abs / 100);
  const frac = String(abs % 100).padStart(2, '0');
  return `${sign}$${group(String(whole))}.${frac}`;
}

/** A ratio as a percentage with one decimal: 0.2534 -> "25.3%"; none -> "–". */
export function percent(ratio) {
  if (ratio === undefined || ratio === null || !Number.isFinite(ratio)) return '–';
  return `${(ratio * 100).toFixed(1)}%`;
}

/** A rate with one decimal and thousands separators: 1234.56 -> "1,234.6". */
export function rate(x) {
  if (x === undefined || x === null || !Number.isFinite(x)) return '–';
  const [whole, frac] = Math.abs(x).toFixed(1).split('.');
  return `${x < 0 ? '-' : ''}${group(whole)}.${frac}`;
}

/** Milliseconds as a short duration: 850 -> "850 ms", 12500 -> "12.5 s". */
export function duration(ms) {
  if (ms === undefined || ms === null || !Number.isFinite(ms)) return '–';
  return ms < 1000 ? `${Math.round(ms)} ms` : `${(ms / 1000).toFixed(1)} s`;
}

/** A time in ms since the epoch as the browser's local clock time, "HH:MM:SS". */
export function clock(ms) {
  return new Date(ms).toLocaleTimeString([], { hour: '2-digit', minute: '2-digit', second: '2-digit', hour12: false });
}

/** A window start as local date and time, "YYYY-MM-DD HH:MM". */
export function windowStart(ms) {
  const d = new Date(ms);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

/** Conversion of summed totals: purchases per click, or none without clicks. */
export function conversion(fields) {
  return fields.clicks > 0 ? fields.purchases / fields.clicks : null;
}

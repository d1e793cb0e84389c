// Drives the query service's web page (GET /) in Debian's Chromium.
//   node web_page_test.mjs BASE_URL IMAGE EXPECTED_ID SCREENSHOT [WORK_DIR]
// BASE_URL: the service's HTTP root; IMAGE: a corpus image; EXPECTED_ID: its
// id in the snapshot; SCREENSHOT: where the full-page screenshot goes.
// BASE_URL may be imagesearch-router's (its /info lists router_shards): the
// same checks run, the header must name the collection and its shards, and
// with $ROUTER_KILL_PID (the only replica of shard $ROUTER_KILL_SHARD) the
// test then kills that replica and checks the page's UNAVAILABLE error and
// its "partial answers" box.
// puppeteer-core comes from $WEB_NPM_DIR (the folder it was installed in);
// Chromium from $CHROMIUM (default /usr/bin/chromium). Exits non-zero on
// the first failed check.
import { createRequire } from 'node:module';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

const [base, imagePath, expectedId, screenshot, workArg] = process.argv.slice(2);
if (!base || !imagePath || !expectedId || !screenshot) {
  console.error('usage: web_page_test.mjs BASE_URL IMAGE EXPECTED_ID SCREENSHOT [WORK_DIR]');
  process.exit(2);
}
// ESM ignores NODE_PATH: resolve puppeteer-core from its install folder.
const npmDir = process.env.WEB_NPM_DIR || process.cwd();
const puppeteer = createRequire(path.join(path.resolve(npmDir), 'package.json'))('puppeteer-core');

const WAIT_MS = 30000;
const work = workArg || fs.mkdtempSync(path.join(os.tmpdir(), 'web-page-test-'));
const passed = [];
let browser;

class CheckError extends Error {}
function check(cond, what) {
  if (!cond) throw new CheckError(what);
}
function ok(what) {
  passed.push(what);
  console.log(`ok   ${what}`);
}
// Bounded wait for a condition in the page; on timeout, says what was seen.
async function waitPage(page, what, fn, arg, describe) {
  try {
    await page.waitForFunction(fn, { timeout: WAIT_MS, polling: 100 }, arg);
  } catch (e) {
    const seen = describe ? await describe().catch((x) => `(cannot describe: ${x.message})`) : '';
    throw new CheckError(`${what}: not met within ${WAIT_MS / 1000} s${seen ? `; page shows ${seen}` : ''} (${e.message.split('\n')[0]})`);
  }
}
async function api(pathAndQuery, init) {
  const res = await fetch(new URL(pathAndQuery, base), { ...init, signal: AbortSignal.timeout(WAIT_MS) });
  const text = await res.text();
  let body;
  try { body = JSON.parse(text); } catch { body = text; }
  return { status: res.status, body };
}
const ids = (hits) => hits.map((h) => h.id);

// Console errors and page errors, by test phase; only the error phase may
// have "Failed to load resource" for its 4xx answer.
const consoleErrors = [];
let phase = 'load';

async function main() {
  const info = await api('/info');
  check(info.status === 200 && info.body && info.body.model,
    `GET /info answers 200 with a model (got ${info.status} ${JSON.stringify(info.body).slice(0, 300)})`);
  const { snapshot_version: version, model } = info.body;
  const routed = Array.isArray(info.body.router_shards) && info.body.router_shards.length > 0;
  const shardCount = routed ? info.body.shard.count : 0;

  browser = await puppeteer.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox', '--headless=new'],
    protocolTimeout: 60000,
    timeout: WAIT_MS,
  });
  const page = await browser.newPage();
  page.setDefaultTimeout(WAIT_MS);
  await page.setViewport({ width: 1200, height: 900 });
  page.on('console', (m) => { if (m.type() === 'error') consoleErrors.push({ phase, text: m.text() }); });
  page.on('pageerror', (e) => consoleErrors.push({ phase, text: `pageerror: ${e.message}`, fatal: true }));
  const statusAndError = () => page.evaluate(() =>
    JSON.stringify({ status: document.querySelector('#status')?.textContent,
      error: document.querySelector('#error')?.hidden ? '(hidden)' : document.querySelector('#error')?.textContent,
      first: [...document.querySelectorAll('#results [data-id]')].slice(0, 5).map((e) => e.dataset.id) }));

  // 1. The page loads and describes the snapshot from /info.
  const res = await page.goto(base + '/', { waitUntil: 'load', timeout: WAIT_MS });
  check(res && res.status() === 200, `GET / answers 200 (got ${res && res.status()})`);
  check(/^text\/html/.test(res.headers()['content-type'] || ''),
    `GET / is text/html (got ${res.headers()['content-type']})`);
  const segments = (info.body.segments || []).length;
  check(segments >= 1, `GET /info lists the segments (got ${JSON.stringify(info.body.segments)})`);
  // A replica names its snapshot version; the router, its collection's shards.
  const want = routed
    ? { v: 'router', where: `${info.body.shard.collection} ${shardCount} shards`, status: `${shardCount} shards`,
        name: model.name, seg: `${segments} segment` }
    : { v: `v${version}`, where: `v${version}`, status: `v${version}`, name: model.name, seg: `${segments} segment` };
  if (routed) {
    check(model.loaded === true, `the router says it embeds images (model.loaded; got ${JSON.stringify(model)})`);
  }
  await waitPage(page, `#info and #status show ${want.v}, ${want.where}, model ${want.name} and ${want.seg}(s)`, (w) => {
    const i = document.querySelector('#info')?.textContent || '', s = document.querySelector('#status')?.textContent || '';
    return i.includes(w.v) && i.includes(w.where) && i.includes(w.name) && i.includes(w.seg) &&
      s.includes(w.status) && s.includes(w.name);
  }, want, statusAndError);
  ok(`page shows ${want.v}, ${want.where}, model ${want.name} and ${want.seg}(s)`);
  const partialHidden = await page.$eval('#partial-field', (n) => n.hidden);
  check(partialHidden === !routed, `the "partial answers" box is ${routed ? 'shown' : 'hidden'} (hidden=${partialHidden})`);

  const textState = await page.evaluate(() => ({
    disabled: document.querySelector('#text').disabled,
    note: document.querySelector('#text-note')?.textContent || '',
    visible: !!document.querySelector('#text-note')?.offsetParent,
  }));
  const textOn = !!(model.has_text && model.loaded);
  check(textState.disabled === !textOn, `#text is ${textOn ? 'enabled' : 'disabled'} (has_text=${model.has_text}, loaded=${model.loaded})`);
  if (!textOn) {
    check(textState.visible && /unavailable/i.test(textState.note) && textState.note.includes(model.name),
      `a visible note says why text search is unavailable (got '${textState.note}')`);
  }
  ok(`text search ${textOn ? 'enabled' : `disabled with note '${textState.note}'`}`);

  const unlabelled = await page.evaluate(() => [...document.querySelectorAll('input, select, textarea')]
    .filter((n) => n.type !== 'hidden' && (!n.labels || n.labels.length === 0)).map((n) => n.id || n.name || n.outerHTML));
  check(unlabelled.length === 0, `every input has a <label> (unlabelled: ${unlabelled.join(', ')})`);
  const live = await page.$eval('#status', (n) => n.getAttribute('aria-live'));
  check(live === 'polite', `#status is aria-live=polite (got ${live})`);
  const role = await page.$eval('#error', (n) => n.getAttribute('role'));
  check(role === 'alert', `#error has role=alert (got ${role})`);
  ok('inputs labelled; #status aria-live=polite; #error role=alert');

  // 2. Upload a corpus image: it is its own nearest neighbour.
  phase = 'image';
  const params = await page.evaluate(() => ({
    top_k: Number(document.querySelector('#topk').value), ef: Number(document.querySelector('#ef').value || 0) }));
  check(Number.isInteger(params.top_k) && params.top_k >= 2, `#topk holds a usable default (got ${params.top_k})`);
  const bytes = fs.readFileSync(imagePath);
  const type = imagePath.endsWith('.png') ? 'image/png' : 'image/jpeg';
  const direct = await api(`/invocations?top_k=${params.top_k}&ef=${params.ef}`,
    { method: 'POST', headers: { 'Content-Type': type }, body: bytes });
  check(direct.status === 200 && Array.isArray(direct.body.hits) && direct.body.hits.length >= 2,
    `direct image query answers hits (got ${direct.status} ${JSON.stringify(direct.body).slice(0, 300)})`);
  const [chooser] = await Promise.all([page.waitForFileChooser({ timeout: WAIT_MS }), page.click('#file')]);
  await chooser.accept([imagePath]);
  await waitPage(page, `first result is ${expectedId}`,
    (id) => document.querySelector('#results [data-id]')?.dataset.id === id, expectedId, statusAndError);
  await waitPage(page, `the first result's thumbnail loads`, () => {
    const img = document.querySelector('#results [data-id] img');
    return !!img && img.complete && img.naturalWidth > 0;
  }, undefined, () => page.evaluate(() => document.querySelector('#results [data-id]')?.outerHTML.slice(0, 400)));
  const shown = await page.$$eval('#results [data-id]', (ns) => ns.map((n) => ({
    id: n.dataset.id, text: n.textContent, alt: n.querySelector('img')?.alt, tag: n.tagName })));
  check(JSON.stringify(shown.map((s) => s.id)) === JSON.stringify(ids(direct.body.hits)),
    `the page shows the hits of the same query sent directly, in order (page ${shown.map((s) => s.id)}; api ${ids(direct.body.hits)})`);
  const hit0 = direct.body.hits[0];
  check(shown[0].text.includes(hit0.score.toFixed(3)), `first result shows score ${hit0.score.toFixed(3)} (text '${shown[0].text}')`);
  const attributes0 = hit0.attributes_json ? JSON.parse(hit0.attributes_json) : {};
  check(Object.keys(attributes0).length > 0, `the first hit has attributes (got '${hit0.attributes_json}')`);
  for (const [k, v] of Object.entries(attributes0)) {
    check(shown[0].text.includes(k) && shown[0].text.includes(String(v)), `first result shows attribute ${k}: ${v} (text '${shown[0].text}')`);
  }
  check(shown[0].alt === `thumbnail of ${hit0.id}`, `thumbnail alt text names the id (got '${shown[0].alt}')`);
  check(['BUTTON', 'A'].includes(shown[0].tag), `results are buttons or links (got ${shown[0].tag})`);
  const status = await page.$eval('#status', (n) => n.textContent);
  const where = routed ? `${shardCount} shards` : `v${direct.body.snapshot_version}`;
  check(/\d+(\.\d+)?\s*ms/.test(status) && status.includes(where) && status.includes(model.name) && !status.includes('partial'),
    `#status shows latency, ${where} and model (got '${status}')`);
  ok(`image upload: first of ${shown.length} results is ${expectedId} with its thumbnail; status '${status}'`);

  fs.mkdirSync(path.dirname(path.resolve(screenshot)), { recursive: true });
  await page.screenshot({ path: screenshot, fullPage: true });
  check(fs.statSync(screenshot).size > 1000, `screenshot written to ${screenshot}`);
  ok(`screenshot ${screenshot}`);

  // 3. Click the 2nd result: "more like this" by id.
  phase = 'more-like-this';
  const before = shown.map((s) => s.id);
  const clicked = before[1];
  const mlt = await api('/invocations', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: clicked, top_k: params.top_k, ef: params.ef }) });
  check(mlt.status === 200 && Array.isArray(mlt.body.hits) && mlt.body.hits.length > 0,
    `direct id query answers hits (got ${mlt.status} ${JSON.stringify(mlt.body).slice(0, 300)})`);
  const wantIds = ids(mlt.body.hits);
  check(JSON.stringify(wantIds) !== JSON.stringify(before), 'the id query answers differently from the image query');
  await page.click(`#results [data-id="${clicked}"]`);
  await waitPage(page, `results become the neighbours of ${clicked}`,
    (w) => JSON.stringify([...document.querySelectorAll('#results [data-id]')].map((n) => n.dataset.id)) === w,
    JSON.stringify(wantIds), statusAndError);
  ok(`click on ${clicked}: page shows its ${wantIds.length} neighbours as POST {"id"} answers`);

  // ... and by keyboard: Tab focus + Enter on another result.
  const next = wantIds.find((id) => id !== clicked);
  const mlt2 = await api('/invocations', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: next, top_k: params.top_k, ef: params.ef }) });
  check(mlt2.status === 200, `direct id query for ${next} answers 200 (got ${mlt2.status})`);
  await page.focus(`#results [data-id="${next}"]`);
  await page.keyboard.press('Enter');
  await waitPage(page, `Enter on ${next} shows its neighbours`,
    (w) => JSON.stringify([...document.querySelectorAll('#results [data-id]')].map((n) => n.dataset.id)) === w,
    JSON.stringify(ids(mlt2.body.hits)), statusAndError);
  ok(`keyboard Enter on ${next}: page shows its neighbours`);

  // 3b. A filter typed into the filter box applies to "more like this" (the
  // corpus was indexed with --schema=class:keyword).
  phase = 'filter';
  const note = await page.$eval('#filter-note', (e) => e.textContent);
  check(note.includes('class (keyword)'), `#filter-note lists the schema fields (got '${note}')`);
  const filter = { must: [{ field: 'class', match: { keyword: 'bag' } }] };
  const anchor = ids(mlt2.body.hits).find((id) => id !== next) || next;
  const fl = await api('/invocations', { method: 'POST', headers: { 'Content-Type': 'application/json' },
    body: JSON.stringify({ id: anchor, top_k: params.top_k, ef: params.ef, filter }) });
  check(fl.status === 200 && fl.body.hits.length > 0 &&
    fl.body.hits.every((h) => JSON.parse(h.attributes_json || '{}').class === 'bag'),
    `direct filtered query answers only bags (got ${fl.status} ${JSON.stringify(fl.body).slice(0, 300)})`);
  await page.type('#filter', JSON.stringify(filter));
  await page.focus(`#results [data-id="${anchor}"]`);
  await page.keyboard.press('Enter');
  await waitPage(page, `filtered neighbours of ${anchor}`,
    (w) => JSON.stringify([...document.querySelectorAll('#results [data-id]')].map((n) => n.dataset.id)) === w,
    JSON.stringify(ids(fl.body.hits)), statusAndError);
  ok(`filter {"class": "bag"} in the filter box: the page shows the API's ${fl.body.hits.length} filtered hits`);
  await page.$eval('#filter', (e) => { e.value = ''; });

  // 4. An undecodable file: the page shows the API's own error words.
  phase = 'error';
  const broken = path.join(work, 'broken.png');
  // A PNG signature and the start of an IHDR chunk, then junk: truncated.
  fs.writeFileSync(broken, Buffer.concat([Buffer.from('89504e470d0a1a0a0000000d49484452', 'hex'),
    Buffer.from('this is not the rest of a PNG image')]));
  const bad = await api(`/invocations?top_k=${params.top_k}&ef=${params.ef}`,
    { method: 'POST', headers: { 'Content-Type': 'image/png' }, body: fs.readFileSync(broken) });
  check(bad.status >= 400 && bad.status < 500 && bad.body && bad.body.error && bad.body.error.message,
    `direct query with broken.png answers a 4xx JSON error (got ${bad.status} ${JSON.stringify(bad.body).slice(0, 300)})`);
  const { code, message } = bad.body.error;
  const [chooser2] = await Promise.all([page.waitForFileChooser({ timeout: WAIT_MS }), page.click('#file')]);
  await chooser2.accept([broken]);
  await waitPage(page, `#error shows '${code}: ${message}'`, (w) => {
    const e = document.querySelector('#error');
    return !!e && !e.hidden && e.offsetParent !== null && e.getBoundingClientRect().height > 0 &&
      e.textContent.includes(w.message) && e.textContent.includes(w.code);
  }, { code, message }, statusAndError);
  ok(`broken.png: #error shows "${code}: ${message}"`);

  // 5. Through the router, one shard loses its only replica.
  const killPid = Number(process.env.ROUTER_KILL_PID || 0);
  if (routed && !killPid) console.log('note: ROUTER_KILL_PID is not set: the shard-down checks do not run');
  if (routed && killPid) {
    phase = 'shard-down';
    const lost = Number(process.env.ROUTER_KILL_SHARD);
    check(Number.isInteger(lost) && lost >= 0 && lost < shardCount, `ROUTER_KILL_SHARD names a shard (got '${process.env.ROUTER_KILL_SHARD}')`);
    await page.$eval('#error', (e) => { e.hidden = true; e.textContent = ''; });
    process.kill(killPid, 'SIGKILL');
    const query = `/invocations?top_k=${params.top_k}&ef=${params.ef}`;
    const post = (q) => api(q, { method: 'POST', headers: { 'Content-Type': type }, body: bytes });
    // The router notices at once (connection refused); bounded wait all the same.
    let down;
    for (let i = 0; i < 100; ++i) {
      down = await post(query);
      if (down.status !== 200) break;
      await new Promise((r) => setTimeout(r, 100));
    }
    check(down.status === 503 && down.body.error && down.body.error.code === 'UNAVAILABLE' &&
      down.body.error.message.includes(`shard ${lost} of ${shardCount}`),
      `direct query with shard ${lost} down: 503 UNAVAILABLE naming it (got ${down.status} ${JSON.stringify(down.body).slice(0, 300)})`);
    const [chooser3] = await Promise.all([page.waitForFileChooser({ timeout: WAIT_MS }), page.click('#file')]);
    await chooser3.accept([imagePath]);
    await waitPage(page, `#error shows UNAVAILABLE naming shard ${lost}`, (w) => {
      const e = document.querySelector('#error');
      return !!e && !e.hidden && e.textContent.includes('UNAVAILABLE') && e.textContent.includes(w);
    }, `shard ${lost} of ${shardCount}`, statusAndError);
    ok(`shard ${lost} down: the page shows the router's UNAVAILABLE error naming it`);

    const partial = await post(`${query}&allow_partial=true`);
    check(partial.status === 200 && JSON.stringify(partial.body.missing_shards) === JSON.stringify([lost]) &&
      partial.body.hits.length > 0,
      `direct query with allow_partial answers from the other shards, naming ${lost} missing (got ${partial.status} ${JSON.stringify(partial.body).slice(0, 300)})`);
    await page.click('#partial');
    check(await page.$eval('#partial', (n) => n.checked), '#partial is checked after a click');
    const [chooser4] = await Promise.all([page.waitForFileChooser({ timeout: WAIT_MS }), page.click('#file')]);
    await chooser4.accept([imagePath]);
    await waitPage(page, `partial results with a status naming shard ${lost} missing`, (w) => {
      const got = JSON.stringify([...document.querySelectorAll('#results [data-id]')].map((n) => n.dataset.id));
      const s = document.querySelector('#status')?.textContent || '';
      return got === w.ids && s.includes(`partial: shard ${w.lost} not answering`) && document.querySelector('#error').hidden;
    }, { ids: JSON.stringify(ids(partial.body.hits)), lost }, statusAndError);
    ok(`"partial answers": the page shows the other shards' ${partial.body.hits.length} hits and names shard ${lost} missing`);

    await page.reload({ waitUntil: 'load' });
    await waitPage(page, `#info shows ${shardCount - 1} of ${shardCount} shards answering`, (w) =>
      (document.querySelector('#info')?.textContent || '').includes(w), `${shardCount} shards (${shardCount - 1} answering)`,
      statusAndError);
    ok(`after a reload the header says ${shardCount} shards (${shardCount - 1} answering)`);
  }

  // 6. Console: nothing but the error step's 4xx (and the 503s of a shard down).
  phase = 'done';
  const unexpected = consoleErrors.filter((c) => c.fatal || !(
    (c.phase === 'error' && /Failed to load resource: the server responded with a status of 4\d\d/.test(c.text)) ||
    (c.phase === 'shard-down' && /Failed to load resource: the server responded with a status of 503/.test(c.text))));
  check(unexpected.length === 0, `no console or page errors (got ${JSON.stringify(unexpected)})`);
  ok(`console clean (${consoleErrors.length} expected 4xx/503 message(s) in the error and shard-down steps)`);
}

const timer = setTimeout(() => { console.error('FAIL: web page test took over 240 s'); process.exit(1); }, 240000);
try {
  await main();
  console.log(`PASS web page: ${passed.length} checks`);
  process.exitCode = 0;
} catch (e) {
  console.error(`FAIL: ${e instanceof CheckError ? e.message : e.stack || e}`);
  if (consoleErrors.length) console.error(`console errors: ${JSON.stringify(consoleErrors)}`);
  process.exitCode = 1;
} finally {
  clearTimeout(timer);
  if (browser) await browser.close().catch(() => {});
  if (!workArg) fs.rmSync(work, { recursive: true, force: true });
}

// Drives headless Chromium through the coordinator's map page, as a person would: signs in,
// reads the markers, filters, opens an encounter with a conflict, waits for a live update, and
// writes a screenshot. Started by tests/tests/map_page.rs, which owns the server and the devices.
//
// Settings come in environment variables (never on the command line, where tokens would show in
// `ps`): AUXILIO_URL, AUXILIO_TOKEN (coordinator), AUXILIO_FIELD_TOKEN, AUXILIO_TOTAL (encounters
// stored), AUXILIO_CLOSED (of them closed), AUXILIO_CONFLICT_ID / _LAT / _LON (an encounter with a
// conflict on counts.m.18-59), AUXILIO_SCREENSHOT (where to write the PNG), and optionally
// AUXILIO_CHROMIUM (default /usr/bin/chromium).
//
// It talks with the Rust test in lines: it prints `READY_FOR_LIVE_UPDATE` once the page is
// subscribed to live updates, the test syncs a device and writes `SYNCED <id> <lat> <lon>` on
// stdin, and the page must then show that encounter without reloading. `STEP ...` lines report
// progress, `SCREENSHOT <path>` the picture, `DONE` success. Any failure exits non-zero with
// `FAIL <reason>`.

import { createInterface } from "node:readline";
import { chromium } from "playwright-core";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined) throw new Error(`${name} is not set`);
  return value;
};
const url = env("AUXILIO_URL");
const token = env("AUXILIO_TOKEN");
const fieldToken = env("AUXILIO_FIELD_TOKEN");
const total = Number(env("AUXILIO_TOTAL"));
const closed = Number(env("AUXILIO_CLOSED"));
const conflict = { id: env("AUXILIO_CONFLICT_ID"), lat: env("AUXILIO_CONFLICT_LAT"), lon: env("AUXILIO_CONFLICT_LON") };
const screenshot = env("AUXILIO_SCREENSHOT");
const executablePath = env("AUXILIO_CHROMIUM", "/usr/bin/chromium");

const lines = createInterface({ input: process.stdin });
const waiting = [];
lines.on("line", (line) => waiting.shift()?.(line.trim()));
const nextLine = () => new Promise((resolve) => waiting.push(resolve));

const step = (text) => console.log(`STEP ${text}`);
function check(condition, message) {
  if (!condition) throw new Error(message);
}

const problems = [];
const browser = await chromium.launch({
  executablePath,
  headless: true,
  // Root in a container has no user namespaces for Chromium's sandbox. The rest keep Chromium
  // from calling home: this machine reaches no network but 127.0.0.1.
  args: [
    "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
  ],
});
try {
  const context = await browser.newContext({ viewport: { width: 1440, height: 900 }, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.setDefaultTimeout(20000);
  page.on("pageerror", (error) => problems.push(`uncaught error in the page: ${error.message}`));
  page.on("console", (message) => {
    // A blocked resource means the page broke its own Content-Security-Policy.
    if (/Content Security Policy|Refused to/i.test(message.text())) problems.push(`console: ${message.text()}`);
  });
  // Every request the page makes goes to the server that served it, and no token in a URL.
  page.on("request", (request) => {
    const target = request.url();
    if (!target.startsWith(url) && !target.startsWith("data:")) problems.push(`request outside the server: ${target}`);
    if (target.includes(token) || target.includes(fieldToken)) problems.push(`a token in a URL: ${target}`);
  });

  await page.goto(url);
  step("page loaded");

  // A field device's token is refused with a message that says what is needed.
  await page.fill("#signin-token", fieldToken);
  await page.click("#signin-submit");
  await page.waitForSelector("#signin-error:not([hidden])");
  const refusal = await page.textContent("#signin-error");
  check(/role does not read the map/i.test(refusal) && /coordinator/i.test(refusal), `unexpected refusal text: ${refusal}`);
  step(`field token refused: ${refusal.trim()}`);

  // The coordinator signs in; the stream goes live and the markers account for every encounter.
  await page.evaluate(() => { window.__auxilioNotReloaded = true; });
  await page.fill("#signin-token", token);
  await page.click("#signin-submit");
  await page.waitForSelector('#live[data-state="live"]');
  await page.waitForFunction((n) => document.getElementById("summary").dataset.total === String(n), total);
  const drawn = await page.evaluate(() => ({
    clusters: [...document.querySelectorAll(".aux-cluster")].map((el) => Number(el.dataset.count)),
    points: document.querySelectorAll(".aux-point").length,
  }));
  const sum = drawn.clusters.reduce((a, b) => a + b, 0) + drawn.points;
  check(drawn.clusters.length + drawn.points > 0, "no markers drawn");
  check(sum === total, `markers account for ${sum} encounters, expected ${total}`);
  step(`map drew ${drawn.clusters.length} groups and ${drawn.points} single encounters for ${total} encounters`);
  const stored = await page.evaluate(() => sessionStorage.length);
  check(stored === 1, "the token is not kept in sessionStorage");

  // A filter changes what is shown: closed encounters only.
  await page.selectOption("#filter-status", "closed");
  await page.waitForFunction((n) => document.getElementById("summary").dataset.total === String(n), closed);
  const closedMarkers = await page.evaluate(() =>
    [...document.querySelectorAll(".aux-cluster")].reduce((a, el) => a + Number(el.dataset.count), 0)
      + document.querySelectorAll(".aux-point").length);
  check(closedMarkers === closed, `with status=closed the markers count ${closedMarkers}, expected ${closed}`);
  step(`status=closed shows ${closed} of ${total}`);
  await page.selectOption("#filter-status", "");
  await page.waitForFunction((n) => document.getElementById("summary").dataset.total === String(n), total);

  // The hotspot layer draws polygons from /v1/hotspots.
  await page.check("#toggle-hotspots");
  await page.waitForFunction(() => Number(document.body.dataset.hotspots || 0) > 0);
  const hotspots = await page.evaluate(() => Number(document.body.dataset.hotspots));
  step(`hotspot layer drew ${hotspots} areas`);

  // Zoomed in on the encounter two devices edited offline, its panel shows the conflict.
  await page.evaluate(({ lat, lon }) => { location.hash = `#map=13/${lat}/${lon}`; }, conflict);
  const marker = `.aux-point[data-id="${conflict.id}"]`;
  await page.waitForSelector(marker);
  await page.click(marker);
  await page.waitForSelector(`#detail[data-id="${conflict.id}"] .conflict`);
  const conflictText = await page.textContent(`#detail .conflict[data-path="counts.m.18-59"]`);
  check(/3/.test(conflictText) && /4/.test(conflictText), `conflict panel lacks both values: ${conflictText}`);
  const devices = await page.$$eval(`#detail .conflict[data-path="counts.m.18-59"] .device`, (els) => els.map((e) => e.title));
  check(devices.length === 2 && devices[0] !== devices[1] && devices.every(Boolean), `conflict devices: ${devices}`);
  step(`panel shows conflict on counts.m.18-59 between devices ${devices.join(" and ")}`);

  // Live update: the Rust test syncs a new encounter near here; it must appear without reload.
  // (Opening the panel narrowed the map and redrew it: wait until that has settled.)
  await page.waitForSelector('body[data-loading="false"]');
  const before = await page.evaluate(() => Number(document.getElementById("summary").dataset.total));
  console.log("READY_FOR_LIVE_UPDATE");
  const synced = await nextLine();
  const [word, newId] = synced.split(" ");
  check(word === "SYNCED" && newId, `expected SYNCED <id>, got ${synced}`);
  await page.waitForSelector(`.aux-point[data-id="${newId}"]`, { timeout: 15000 });
  await page.waitForFunction((n) => Number(document.getElementById("summary").dataset.total) === n, before + 1);
  check(await page.evaluate(() => window.__auxilioNotReloaded === true), "the page reloaded");
  step(`encounter ${newId} appeared without a reload`);

  // The picture for people: the whole border region, hotspots on, the conflict panel open.
  await page.evaluate(() => { location.hash = "#map=6/29.2/-106.8"; });
  await page.waitForFunction(() => document.querySelectorAll(".aux-cluster").length > 0);
  await page.waitForTimeout(600);
  await page.screenshot({ path: screenshot });
  console.log(`SCREENSHOT ${screenshot}`);
  // And one zoomed in on the Sonoran desert, where encounters are drawn one by one.
  await page.click("#detail-close");
  await page.evaluate(() => { location.hash = "#map=9/31.72/-112.25"; });
  await page.waitForFunction(() => document.querySelectorAll(".aux-point").length > 50);
  await page.waitForTimeout(600);
  const pointsShot = screenshot.replace(/\.png$/, "-points.png");
  await page.screenshot({ path: pointsShot });
  console.log(`SCREENSHOT ${pointsShot}`);

  check(problems.length === 0, problems.join("; "));
  console.log("DONE");
} catch (error) {
  console.log(`FAIL ${error.message.split("\n")[0]}`);
  for (const problem of problems) console.log(`FAIL ${problem}`);
  process.exitCode = 1;
} finally {
  await browser.close();
  lines.close();
}

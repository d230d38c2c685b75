// Browser test of the search page in real headless Chromium (Debian's /usr/bin/chromium, driven
// by playwright-core): type a query, see the photo with a box on the object, open it, ask for
// more like it, walk results with the keyboard, filter, draw a region and drop an image to search
// by example, check error and empty states, a phone-sized screen, and a clean console.
//
//   node web/tests/search.mjs BASE_URL OUT_DIR
// Exits non-zero with a message on the first failed check; screenshots go to OUT_DIR.
import { chromium } from "playwright-core";
import { mkdirSync } from "node:fs";
import { join } from "node:path";

const [base, out] = process.argv.slice(2);
if (!base || !out) {
  console.error("usage: node search.mjs BASE_URL OUT_DIR");
  process.exit(2);
}
mkdirSync(out, { recursive: true });
const executablePath = process.env.CHROMIUM || "/usr/bin/chromium";

function check(cond, message) {
  if (!cond) throw new Error(message);
}

const browser = await chromium.launch({
  executablePath,
  args: ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync"],
});
const problems = [];
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 860 } });
  page.on("console", (m) => { if (m.type() === "error" && !isExpected(m.text())) problems.push(`console: ${m.text()}`); });
  page.on("pageerror", (e) => problems.push(`page error: ${e.message}`));
  page.on("requestfailed", (r) => problems.push(`request failed: ${r.url()}`));
  // Answers >= 400 are problems unless a step expects them (the error-state check).
  let expectErrors = false;
  page.on("response", (r) => { if (r.status() >= 400 && !expectErrors) problems.push(`HTTP ${r.status()}: ${r.url()}`); });
  const isExpected = (text) => expectErrors && text.includes("status of 400");

  await page.goto(base);
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("indexed"));

  // "/" focuses the search box (from anywhere on the page).
  await page.evaluate(() => document.activeElement && document.activeElement.blur());
  await page.keyboard.press("/");
  check(await page.evaluate(() => document.activeElement.id === "q"), "'/' did not focus the search box");

  // Type "cat": the cat photo comes first, with a box drawn where the cat is.
  await page.keyboard.type("cat");
  await page.waitForSelector("#grid .card img");
  await page.waitForFunction(() => [...document.querySelectorAll("#grid .card img")].every((i) => i.complete && i.naturalWidth > 0));
  const first = await page.evaluate(() => {
    const card = document.querySelector("#grid .card");
    const img = card.querySelector("img").getBoundingClientRect();
    const rect = card.querySelector("svg rect");
    const r = rect ? rect.getBoundingClientRect() : null;
    return {
      path: card.querySelector(".path").textContent,
      score: Number(card.querySelector(".score").textContent),
      img: { x: img.x, y: img.y, w: img.width, h: img.height },
      box: r && { x: r.x, y: r.y, w: r.width, h: r.height },
      boxAttr: rect && ["x", "y", "width", "height"].map((a) => Number(rect.getAttribute(a))),
    };
  });
  check(first.path.includes("chelsea"), `first hit for "cat" is ${first.path}, not the cat photo`);
  check(first.score >= 0.5, `cat score ${first.score}`);
  check(first.box, "no box drawn on the cat thumbnail");
  // The cat fills most of chelsea.png (451x300): the drawn box must cover most of the thumbnail
  // and lie inside it.
  const inside = first.box.x >= first.img.x - 2 && first.box.y >= first.img.y - 2
    && first.box.x + first.box.w <= first.img.x + first.img.w + 2 && first.box.y + first.box.h <= first.img.y + first.img.h + 2;
  check(inside, `box ${JSON.stringify(first.box)} outside image ${JSON.stringify(first.img)}`);
  check(first.box.w * first.box.h > 0.6 * first.img.w * first.img.h, `box ${JSON.stringify(first.box)} does not cover the cat`);
  await page.screenshot({ path: join(out, "1-search-cat.png") });

  // Click: the full image with every matching box and its score.
  await page.click("#grid .card");
  await page.waitForSelector("#viewer[open]");
  await page.waitForFunction(() => document.getElementById("viewer-img").naturalWidth > 0);
  // The boxes are drawn by the image's load handler, which can run after naturalWidth is set.
  await page.waitForFunction(() => document.querySelectorAll("#viewer-boxes rect").length > 0, null, { timeout: 5000 })
    .catch(() => {});
  const viewer = await page.evaluate(() => ({
    natural: [document.getElementById("viewer-img").naturalWidth, document.getElementById("viewer-img").naturalHeight],
    boxes: document.querySelectorAll("#viewer-boxes rect").length,
    items: [...document.querySelectorAll("#viewer-list li")].map((li) => li.textContent),
  }));
  check(viewer.natural[0] === 451 && viewer.natural[1] === 300, `full image is ${viewer.natural}`);
  check(viewer.boxes >= 1 && viewer.items.length === viewer.boxes, `viewer shows ${viewer.boxes} boxes, ${viewer.items.length} list items`);
  check(viewer.items[0].startsWith("cat: 0."), `viewer list: ${viewer.items[0]}`);
  // The sample photos carry no EXIF: their capture time is the file's, and says so.
  const meta = await page.textContent("#viewer-meta");
  check(/^taken \d{4}-\d\d-\d\d \d\d:\d\d UTC \(file time\)$/.test(meta), `viewer metadata: ${meta}`);
  await page.screenshot({ path: join(out, "2-viewer.png") });

  // More like this: a new result grid from the box's own embedding.
  await page.click("#viewer-list li button");
  await page.waitForFunction(() => location.search.includes("similar="));
  await page.waitForSelector("#grid .card");
  const similarFirst = await page.textContent("#grid .card .path");
  check(similarFirst.length > 0, "more like this returned nothing");
  await page.screenshot({ path: join(out, "3-more-like-this.png") });

  // Keyboard: → shows the next result, ← the previous one, Esc closes; the position is shown.
  await page.fill("#q", "person");
  await page.waitForFunction(() => location.search.includes("q=person")
    && !document.getElementById("status").textContent.startsWith("Searching")
    && document.querySelectorAll("#grid .card").length >= 2);
  await page.click("#grid .card");
  await page.waitForSelector("#viewer[open]");
  const paths = await page.$$eval("#grid .card .path", (els) => els.map((e) => e.textContent));
  check(paths.length >= 2, `the keyboard check needs two results, got ${paths.length}`);
  const title = () => page.textContent("#viewer-title");
  await page.keyboard.press("ArrowRight");
  await page.waitForFunction((p) => document.getElementById("viewer-title").textContent.startsWith(p), paths[1]);
  check((await page.textContent("#viewer-position")).startsWith("2 / "), "position after →");
  await page.keyboard.press("ArrowLeft");
  await page.waitForFunction((p) => document.getElementById("viewer-title").textContent.startsWith(p), paths[0]);
  await page.keyboard.press("ArrowLeft"); // the first: stays
  check((await title()).startsWith(paths[0]), "← past the first result");
  await page.keyboard.press("Escape");
  await page.waitForFunction(() => !document.getElementById("viewer").open);

  // The filter bar: it narrows the search, goes into the URL, and empty results say so.
  const settled = (query) => page.waitForFunction((q) => location.search.includes(q)
    && !document.getElementById("status").textContent.startsWith("Searching"), query);
  const setFilter = async (id, value) => { await page.fill(id, value); await page.dispatchEvent(id, "change"); };
  await page.fill("#q", "person");
  await settled("q=person");
  await setFilter("#f-camera", "no-such-camera");
  await page.waitForFunction(() => location.search.includes("camera=no-such-camera")
    && document.getElementById("status").textContent.includes("Nothing scored"));
  await setFilter("#f-camera", "");
  await setFilter("#f-until", "2000-01-01");
  await page.waitForFunction(() => location.search.includes("until=2000-01-01")
    && document.getElementById("status").textContent.includes("Nothing scored"));
  await setFilter("#f-until", "");
  await setFilter("#f-after", "2000-01-01");
  await page.waitForFunction(() => location.search.includes("after=2000-01-01")
    && document.querySelectorAll("#grid .card").length > 0);
  await page.selectOption("#f-sort", "time");
  await page.waitForFunction(() => location.search.includes("sort=time")
    && !document.getElementById("status").textContent.startsWith("Searching")
    && document.querySelectorAll("#grid .card").length > 0);
  await page.screenshot({ path: join(out, "7-filters.png") });
  await page.selectOption("#f-sort", "");
  await setFilter("#f-after", "");

  // Draw a box around the motorcycle of one photo: the other motorcycle photo comes up above
  // the photos without one.
  await page.fill("#q", "motorcycle");
  await settled("q=motorcycle");
  await page.click("#grid .card:has(.path:text-is('motorcycle_left.png'))");
  await page.waitForSelector("#viewer[open]");
  await page.waitForFunction(() => document.getElementById("viewer-img").naturalWidth > 0);
  const r = await page.$eval("#viewer-img", (el) => { const b = el.getBoundingClientRect(); return { x: b.x, y: b.y, w: b.width, h: b.height }; });
  const sx = r.w / 741, sy = r.h / 500;
  await page.mouse.move(r.x + 100 * sx, r.y + 70 * sy);
  await page.mouse.down();
  await page.mouse.move(r.x + 400 * sx, r.y + 260 * sy, { steps: 4 });
  await page.mouse.move(r.x + 690 * sx, r.y + 455 * sy, { steps: 4 });
  await page.mouse.up();
  await page.waitForFunction(() => !document.getElementById("viewer").open
    && document.getElementById("status").textContent.includes("with objects like the region"));
  const regionPaths = await page.$$eval("#grid .card .path", (els) => els.map((e) => e.textContent));
  const other = regionPaths.indexOf("motorcycle_right.png");
  check(other >= 0, `region search: ${regionPaths}`);
  for (const name of ["chelsea.png", "coffee.png", "astronaut.png", "rocket.jpg"]) {
    const at = regionPaths.indexOf(name);
    check(at === -1 || at > other, `region search ranks ${name} above the other motorcycle: ${regionPaths}`);
  }
  await page.screenshot({ path: join(out, "8-region.png") });

  // Drop an image file onto the page: the cat photo is found by it.
  await page.evaluate(async () => {
    const found = await (await fetch("/api/search?q=cat&group=images")).json();
    const bytes = await (await fetch(`/api/images/${found.images[0].image}`)).blob();
    const file = new File([bytes], "my-cat.png", { type: "image/png" });
    const transfer = new DataTransfer();
    transfer.items.add(file);
    document.body.dispatchEvent(new DragEvent("drop", { dataTransfer: transfer, bubbles: true, cancelable: true }));
  });
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("with objects like my-cat.png"));
  const dropFirst = await page.textContent("#grid .card .path");
  check(dropFirst === "chelsea.png", `dropped cat image: first result ${dropFirst}`);
  await page.screenshot({ path: join(out, "9-drop.png") });

  // Errors are shown, not thrown.
  expectErrors = true;
  await page.fill("#q", "-dog");
  await page.waitForFunction(() => document.getElementById("status").classList.contains("error"));
  const error = await page.textContent("#status");
  check(error.includes("only excludes"), `error message: ${error}`);
  expectErrors = false;

  // Empty state: raise the minimum score to 1.
  await page.fill("#q", "motorbike");
  await page.waitForSelector("#grid .card");
  await page.$eval("#threshold", (s) => { s.value = "1"; s.dispatchEvent(new Event("change")); });
  await page.waitForFunction(() => document.getElementById("status").textContent.includes("Nothing scored"));
  await page.screenshot({ path: join(out, "4-empty.png") });

  // The jobs panel: a rescan queued from the page runs and shows its result.
  await page.click("#jobs summary");
  await page.click("#jobs-rescan");
  await page.waitForFunction(() => [...document.querySelectorAll("#jobs-list li")]
    .some((li) => li.textContent.includes("Rescan") && li.classList.contains("done")), null, { timeout: 30000 });
  const jobRow = await page.textContent("#jobs-list li.done");
  check(/unchanged/.test(jobRow), `finished rescan row: ${jobRow}`);
  await page.screenshot({ path: join(out, "5-jobs.png") });
  await page.click("#jobs summary");

  // A phone screen.
  const phone = await browser.newPage({ viewport: { width: 390, height: 844 }, isMobile: true });
  phone.on("pageerror", (e) => problems.push(`phone page error: ${e.message}`));
  await phone.goto(`${base}?q=person`);
  await phone.waitForSelector("#grid .card img");
  const overflow = await phone.evaluate(() => document.documentElement.scrollWidth > innerWidth + 1);
  check(!overflow, "the page scrolls sideways on a phone");
  await phone.screenshot({ path: join(out, "6-phone.png") });

  check(problems.length === 0, `browser problems:\n${problems.join("\n")}`);
  console.log(JSON.stringify({ ok: true, first, viewer, similarFirst, screenshots: out }));
} catch (err) {
  console.error(`browser test failed: ${err.message}`);
  if (problems.length) console.error(problems.join("\n"));
  process.exitCode = 1;
} finally {
  await browser.close();
}

// The dashboard in Debian's chromium, against the fixture node of global-setup.js: scopes, a tampered URL,
// keyboard-only drill-down to a container, a terminal's chart (its time axis, its default range, an empty
// range), the enterprise page's last 7 days, alarm descriptions in each language, tables named by their
// headings, acknowledge then resolve with reloads, an alarm caused through the ingest API appearing in
// the live feed, the language switch, axe (no serious or critical findings), and screenshots of the main
// pages (artifacts/screenshots, kept by CI).
//
// The fixture's readings are placed relative to the wall clock the node's pages read (see
// tests/src/bin/dashboard-fixture.rs): `fixture().clock` names the days — `today` and `last_reading_day`
// (China Standard Time, YYYY-MM-DD), `last_reading_days_ago` — so no test computes them itself.
import { test, expect } from "@playwright/test";
import AxeBuilder from "@axe-core/playwright";
import { mkdirSync, readFileSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));
const shots = path.join(here, "artifacts", "screenshots");
mkdirSync(shots, { recursive: true });
const fixture = () => JSON.parse(readFileSync(path.join(here, ".fixture.json"), "utf8"));
const url = (p) => fixture().url + p;
const clock = () => fixture().clock;
const DAY_S = 86_400;
/** A China Standard Time day (YYYY-MM-DD) as the zh-CN pages write it: 2026年11月20日. */
const zhDay = (iso) => {
  const [y, m, d] = iso.split("-").map(Number);
  return `${y}年${m}月${d}日`;
};
/** The start of a China Standard Time day (YYYY-MM-DD), in seconds since 1970. */
const cstMidnightS = (iso) => Date.parse(`${iso}T00:00:00+08:00`) / 1000;
/** A China Standard Time day `n` days after `iso` (YYYY-MM-DD). */
const addDays = (iso, n) => new Date((cstMidnightS(iso) + n * DAY_S + 8 * 3600) * 1000).toISOString().slice(0, 10);
/** What an alarm's description must never show: the API's codes and raw subjects. */
const RAW_CODES = [
  "weight_fluctuation", "manifest_weight_mismatch", "storage_overdue", "over_capacity", "terminal_silent",
  "tamper_suspected", "(low)", "(medium)", "(high)", "container:", "terminal:", "manifest:", "enterprise:",
];

/** The weights chart's time axis (uPlot's x scale, in seconds) and the points' times it was given. */
async function chartAxis(page) {
  await page.waitForFunction(() => document.getElementById("weights-chart")?.uplot?.scales?.x?.max != null);
  return page.evaluate(() => {
    const u = document.getElementById("weights-chart").uplot;
    return { min: u.scales.x.min, max: u.scales.x.max, times: Array.from(u.data[0]) };
  });
}

async function signIn(page, tier) {
  await page.goto(url("/ui"));
  await expect(page).toHaveURL(/\/ui\/sign-in$/);
  const field = page.getByLabel("访问令牌");
  await field.fill(fixture().tokens[tier]);
  await field.press("Enter");
  await expect(page).toHaveURL(/\/ui$/);
}

async function noSeriousAxeFindings(page, what) {
  const results = await new AxeBuilder({ page }).analyze();
  const bad = results.violations.filter((v) => v.impact === "serious" || v.impact === "critical");
  expect(
    bad.map((v) => `${v.id} (${v.impact}): ${v.nodes.map((n) => n.target.join(" ")).join(", ")}`),
    `axe on ${what}`,
  ).toEqual([]);
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(shots, `${name}.png`), fullPage: true });
}

/** Presses Tab until the focused element matches `selector` (keyboard only, no clicks). */
async function tabTo(page, selector) {
  for (let i = 0; i < 80; i++) {
    await page.keyboard.press("Tab");
    if (await page.evaluate((s) => document.activeElement?.matches(s) ?? false, selector)) {
      return;
    }
  }
  throw new Error(`Tab never reached ${selector}`);
}

test("a provincial regulator sees only that province, and another province's page does not exist", async ({ page }) => {
  await signIn(page, "province");
  await expect(page.locator("html")).toHaveAttribute("lang", "zh-CN");
  await expect(page.locator(".tile")).toHaveCount(1);
  await expect(page.locator(".tile")).toContainText("广东省");
  await expect(page.locator("body")).not.toContainText("江苏省");
  await shot(page, "overview-province");
  await noSeriousAxeFindings(page, "the overview");

  const other = await page.goto(url("/ui/provinces/320000"));
  expect(other.status()).toBe(404);
  const otherTitle = await page.title();
  await expect(page.locator("body")).not.toContainText("E-C");
  const absent = await page.goto(url("/ui/provinces/999999"));
  expect(absent.status()).toBe(404);
  expect(await page.title()).toBe(otherTitle);
  const enterprise = await page.goto(url("/ui/enterprises/E-C"));
  expect(enterprise.status()).toBe(404);
});

test("keyboard only: overview → province → enterprise → container", async ({ page }) => {
  await signIn(page, "province");
  await tabTo(page, 'a[href="/ui/provinces/440000"]');
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(/\/ui\/provinces\/440000$/);
  await expect(page.locator("nav.crumbs")).toContainText("总览");
  await shot(page, "province");
  await noSeriousAxeFindings(page, "the province page");
  await tabTo(page, 'a[href="/ui/enterprises/E-A"]');
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(/\/ui\/enterprises\/E-A$/);
  await expect(page.locator("h1")).toContainText("E-A 危废处置");
  await shot(page, "enterprise");
  await noSeriousAxeFindings(page, "the enterprise page");
  await tabTo(page, 'a[href="/ui/containers/T-A-C0"]');
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(/\/ui\/containers\/T-A-C0$/);
  await expect(page.locator("table.custody tbody tr")).toHaveCount(2);
  await expect(page.locator("code.fp").first()).toHaveText(/^[0-9a-f]{64}$/);
  await shot(page, "container");
  await noSeriousAxeFindings(page, "the container page");
});

test("a terminal's weights: the chart and its table", async ({ page }) => {
  await signIn(page, "province");
  const last = clock().last_reading_day;
  await page.goto(url(`/ui/terminals/T-A?days=1&until=${last}`));
  await expect(page.locator("#weights-chart canvas")).toHaveCount(1);
  await page.locator("details summary").click();
  await expect(page.locator("details table tbody tr").first()).toContainText(`${zhDay(last)} 16:00:01`);
  await shot(page, "terminal");
  await noSeriousAxeFindings(page, "the terminal page");
});

test("the chart's time axis is the range chosen, in seconds, and holds the readings' times", async ({ page }) => {
  await signIn(page, "province");
  const until = clock().last_reading_day;
  for (const days of [1, 7, 30]) {
    await page.goto(url(`/ui/terminals/T-A?days=${days}&until=${until}`));
    const axis = await chartAxis(page);
    // The range asked for: `days` China Standard Time days ending with `until`.
    const to = cstMidnightS(until) + DAY_S;
    const from = to - days * DAY_S;
    expect(axis.min, `${days} days: the axis starts where the range does`).toBeCloseTo(from, 3);
    expect(axis.max, `${days} days: the axis ends where the range does`).toBeCloseTo(to, 3);
    // And every point drawn lies on it, on the readings' day (16:00 China Standard Time).
    expect(axis.times.length, `${days} days: points`).toBeGreaterThan(0);
    for (const t of axis.times) {
      expect(t).toBeGreaterThanOrEqual(axis.min);
      expect(t).toBeLessThanOrEqual(axis.max);
      expect(t).toBeGreaterThanOrEqual(cstMidnightS(until) + 16 * 3600);
      expect(t).toBeLessThan(cstMidnightS(until) + 17 * 3600);
    }
  }
  await shot(page, "terminal-30-days");
});

test("a terminal opens on its latest readings; an empty range says when the last was and links to it", async ({ page }) => {
  await signIn(page, "province");
  const { last_reading_day: last, last_reading_days_ago: ago, today } = clock();
  // No range asked for: the last reading is older than the default 7 days, so the page shows the 7 days
  // that end on its day, and says so.
  await page.goto(url("/ui/terminals/T-A"));
  await expect(page.locator("#range-moved")).toContainText("最近 7 天没有读数");
  await expect(page.locator("#range-moved")).toContainText(`最近一次读数在 ${zhDay(last)} 16:00:0`);
  await expect(page.locator("#range-moved")).toContainText(`${ago} 天前`);
  await expect(page.locator("#no-readings")).toHaveCount(0);
  const axis = await chartAxis(page);
  expect(axis.max).toBeCloseTo(cstMidnightS(last) + DAY_S, 3);
  await page.locator("details summary").click();
  await expect(page.locator("details table tbody tr").first()).toContainText(zhDay(last));
  await shot(page, "terminal-default-range");

  // A range chosen without readings (the 7 days up to today): said, with the last reading and a link
  // to a range that shows it.
  await page.goto(url(`/ui/terminals/T-A?days=7&until=${today}`));
  const empty = page.locator("#no-readings");
  await expect(empty).toContainText("这段时间没有读数");
  await expect(empty).toContainText(`最近一次读数在 ${zhDay(last)} 16:00:0`);
  await expect(empty).toContainText(`${ago} 天前`);
  await expect(page.locator("#range-moved")).toHaveCount(0);
  await shot(page, "terminal-empty-range");
  await noSeriousAxeFindings(page, "a terminal page without readings");
  await empty.getByRole("link").click();
  await expect(page).toHaveURL(new RegExp(`/ui/terminals/T-A\\?days=7&until=${last}$`));
  await expect(page.locator("#weights-chart canvas")).toHaveCount(1);
  await page.locator("details summary").click();
  await expect(page.locator("details table tbody tr").first()).toContainText(zhDay(last));
});

test("the enterprise page's KPIs are the last 7 days by the page's clock, and say so when there are none", async ({ page }) => {
  await signIn(page, "province");
  const { today, last_reading_day: last } = clock();
  const first = addDays(today, -6);
  await page.goto(url("/ui/enterprises/E-A"));
  const section = page.locator('section[aria-labelledby="kpis-h"]');
  await expect(section.locator("#kpis-range")).toHaveText(`${zhDay(first)} – ${zhDay(today)}`);
  // E-A's readings (and their KPI day) are older; its alarms and manifest were recorded today.
  const days = await section.locator("table time").evaluateAll((ts) => ts.map((t) => t.getAttribute("datetime")));
  expect(days.length, "today's figures (alarms, a manifest)").toBeGreaterThan(0);
  for (const d of days) {
    expect(d >= first && d <= today, `${d} within ${first} – ${today}`).toBeTruthy();
  }
  expect(days).not.toContain(last);
  await expect(section).not.toContainText(zhDay(last));
  // E-B has no figures at all: said in words.
  await page.goto(url("/ui/enterprises/E-B"));
  const none = page.locator('section[aria-labelledby="kpis-h"]');
  await expect(none.locator("table")).toHaveCount(0);
  await expect(none).toContainText("这 7 天没有任何指标记录");
  await expect(none.locator("#kpis-range")).toHaveText(`${zhDay(first)} – ${zhDay(today)}`);
});

test("alarm descriptions are in the page's language, with their values and no raw codes", async ({ page }) => {
  await signIn(page, "national");
  await page.goto(url("/ui/alarms?all=1"));
  const cells = page.locator("table.alarms tbody tr td:nth-child(5)");
  await expect(cells).not.toHaveCount(0);
  const zh = await cells.allTextContents();
  for (const d of zh) {
    for (const code of RAW_CODES) {
      expect(d, `zh-CN description`).not.toContain(code);
    }
    expect(d).not.toMatch(/\bkg\b/);
  }
  const first = page.locator("table.alarms tbody tr", { hasText: "T-A-C0" }).first();
  await expect(first.locator("td:nth-child(5)")).toContainText("容器 T-A-C0 的重量由 100.0 千克变为 60.0 千克（变化 40.00%）");
  await expect(first.locator("td:nth-child(3)")).toHaveText(/[高中低]$/);
  await page.getByRole("link", { name: "English" }).click();
  await expect(page.locator("html")).toHaveAttribute("lang", "en");
  const en = await cells.allTextContents();
  for (const d of en) {
    for (const code of RAW_CODES) {
      expect(d, `English description`).not.toContain(code);
    }
    expect(d, "no Chinese in the English description").not.toMatch(/[\u4e00-\u9fff]/);
  }
  await expect(first.locator("td:nth-child(5)")).toContainText(
    "Container T-A-C0 went from 100.0 kg to 60.0 kg (a change of 40.00%), weighed by terminal T-A.",
  );
  await expect(first.locator("td:nth-child(3)")).toHaveText(/(High|Medium|Low)$/);
  await shot(page, "alarms-en");
});

test("no table caption repeats the heading above it, and every table has an accessible name", async ({ page }) => {
  await signIn(page, "national");
  const last = clock().last_reading_day;
  for (const p of [
    "/ui",
    "/ui/provinces/440000",
    "/ui/enterprises/E-A",
    "/ui/containers/T-A-C0",
    `/ui/terminals/T-A?days=1&until=${last}`,
    "/ui/manifests/M-1",
    "/ui/alarms?all=1",
  ]) {
    await page.goto(url(p));
    for (const d of await page.locator("details").all()) {
      await d.evaluate((el) => { el.open = true; });
    }
    const tables = await page.locator("table").all();
    expect(tables.length, `${p}: tables`).toBeGreaterThan(0);
    for (const table of tables) {
      const t = await table.evaluate((el) => {
        const words = (n) => (n?.textContent ?? "").replace(/\s+/g, " ").trim();
        // The nearest heading before the table in document order.
        const all = Array.from(document.querySelectorAll("h1, h2, h3, h4, h5, h6"));
        const before = all.filter((h) => h.compareDocumentPosition(el) & Node.DOCUMENT_POSITION_FOLLOWING);
        const labelledby = (el.getAttribute("aria-labelledby") ?? "").split(/\s+/).filter(Boolean);
        return {
          caption: el.caption ? words(el.caption) : null,
          heading: words(before[before.length - 1]),
          labelledby: labelledby.map((id) => words(document.getElementById(id))),
        };
      });
      if (t.caption !== null) {
        expect(t.caption.includes(t.heading), `${p}: caption "${t.caption}" repeats heading "${t.heading}"`).toBe(false);
      }
      await expect(table, `${p}: a table without a name`).toHaveAccessibleName(/\S/);
      if (t.labelledby.length) {
        expect(t.labelledby.every((w) => w.length > 0), `${p}: aria-labelledby names a missing or empty element`).toBe(true);
        await expect(table).toHaveAccessibleName(t.labelledby.join(" "));
      }
    }
  }
});

test("acknowledge then resolve an alarm; both survive a reload", async ({ page }) => {
  await signIn(page, "national");
  await page.goto(url("/ui/alarms"));
  const row = page.locator("table.alarms tbody tr", { hasText: "E-A" }).first();
  const id = await row.getAttribute("id");
  await row.getByLabel("处理说明").fill("现场已核查");
  await row.getByRole("button", { name: "确认" }).click();
  // htmx swaps the row in place once the node has it.
  await expect(page.locator(`tr#${id}`)).toContainText("已确认");
  await page.reload();
  const again = page.locator(`tr#${id}`);
  await expect(again).toContainText("已确认");
  await expect(again.getByRole("button", { name: "确认" })).toHaveCount(0);
  await shot(page, "alarms");
  await noSeriousAxeFindings(page, "the alarms page");
  await again.getByLabel("处理说明").fill("已转运处置");
  await again.getByRole("button", { name: "解决" }).click();
  await expect(page.locator(`tr#${id}`)).toContainText("已解决");
  await page.reload();
  await expect(page.locator(`tr#${id}`)).toHaveCount(0);
  await page.goto(url("/ui/alarms?all=1"));
  await expect(page.locator(`tr#${id}`)).toContainText("已解决");
  await page.reload();
  await expect(page.locator(`tr#${id}`)).toContainText("已解决");
});

test("an alarm caused through the ingest API appears in the live feed; nothing out of scope does", async ({ page, request }) => {
  await signIn(page, "province");
  const feedOpen = page.waitForResponse((r) => r.url().endsWith("/ui/alarms/feed"));
  await page.goto(url("/ui/alarms"));
  await feedOpen;
  const outOfScope = await request.post(fixture().trigger + "/alarm/T-C");
  expect(outOfScope.ok()).toBeTruthy();
  const caused = await request.post(fixture().trigger + "/alarm/T-A");
  expect(caused.ok()).toBeTruthy();
  const t0 = Date.now();
  // The figure: within 1 s of the upload's acknowledgement.
  await expect(page.locator("#live-alarms li").first()).toBeVisible({ timeout: 1000 });
  const latency = Date.now() - t0;
  console.log(`ingest → alarm in the browser's live feed: ${latency} ms`);
  await expect(page.locator("#live-alarms li").first()).toContainText("E-A");
  // In the page's language, from the typed fields, like the table's descriptions.
  await expect(page.locator("#live-alarms li").first()).toContainText("容器 T-A-C0 的重量由");
  for (const code of RAW_CODES) {
    await expect(page.locator("#live-alarms li").first()).not.toContainText(code);
  }
  await page.waitForTimeout(1500);
  await expect(page.locator("#live-alarms li", { hasText: "E-C" })).toHaveCount(0);
  await expect(page.locator("#live-alarms")).toHaveAttribute("aria-live", "polite");
  await shot(page, "alarms-live");
});

test("search by keyboard, and a manifest", async ({ page }) => {
  await signIn(page, "national");
  await tabTo(page, 'a[href="/ui/search"]');
  await page.keyboard.press("Enter");
  await expect(page).toHaveURL(/\/ui\/search$/);
  await page.getByLabel("关键词").fill("重量异常波动");
  await page.getByLabel("关键词").press("Enter");
  await expect(page.locator("ol.hits li")).not.toHaveCount(0);
  await expect(page.locator("ol.hits")).toContainText("E-A");
  await shot(page, "search");
  await noSeriousAxeFindings(page, "the search page");
  await page.goto(url("/ui/manifests/M-1"));
  await expect(page.locator("h1")).toContainText("M-1");
  await expect(page.getByRole("link", { name: "T-A-C0" })).toHaveCount(1);
  await shot(page, "manifest");
  await noSeriousAxeFindings(page, "the manifest page");
});

test("switching the language", async ({ page }) => {
  await signIn(page, "national");
  await expect(page.locator(".tile")).toHaveCount(31);
  await shot(page, "overview-national");
  await page.getByRole("link", { name: "English" }).click();
  await expect(page.locator("html")).toHaveAttribute("lang", "en");
  await expect(page.locator("h1")).toHaveText("National");
  await expect(page.locator(".tile", { hasText: "Guangdong" })).toHaveCount(1);
  await shot(page, "overview-en");
  await noSeriousAxeFindings(page, "the English overview");
  await page.getByRole("link", { name: "中文" }).click();
  await expect(page.locator("html")).toHaveAttribute("lang", "zh-CN");
});

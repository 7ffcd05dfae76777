// The dashboard in Debian's chromium, against the fixture node of global-setup.js: scopes, a tampered URL,
// keyboard-only drill-down to a container, acknowledge then resolve with reloads, an alarm caused through
// the ingest API appearing in the live feed, the language switch, axe (no serious or critical findings),
// and screenshots of the main pages (artifacts/screenshots, kept by CI).
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
  await page.goto(url("/ui/terminals/T-A?days=1&until=2026-11-20"));
  await expect(page.locator("#weights-chart canvas")).toHaveCount(1);
  await page.locator("details summary").click();
  await expect(page.locator("details table tbody tr").first()).toContainText("2026年11月20日 16:00:01");
  await shot(page, "terminal");
  await noSeriousAxeFindings(page, "the terminal page");
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

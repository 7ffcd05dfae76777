// End-to-end tests of the dashboard (docs/dashboard.md) in Debian's chromium: @playwright/test is pinned to
// the release whose Chromium major matches Debian's (1.64.x ↔ 156), no browser is downloaded, and
// `executablePath` points at the system one (CUSTODIAN_CHROMIUM, /usr/bin/chromium by default).
import { defineConfig } from "@playwright/test";

export default defineConfig({
  testDir: ".",
  testMatch: /.*\.spec\.js/,
  globalSetup: "./global-setup.js",
  fullyParallel: false,
  workers: 1,
  retries: 0,
  timeout: 60_000,
  reporter: [["list"]],
  outputDir: "artifacts/test-results",
  use: {
    browserName: "chromium",
    headless: true,
    locale: "zh-CN",
    timezoneId: "Asia/Shanghai",
    viewport: { width: 1280, height: 900 },
    launchOptions: {
      executablePath: process.env.CUSTODIAN_CHROMIUM || "/usr/bin/chromium",
      // Root in CI; and no background traffic this machine's closed network would refuse.
      args: [
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
      ],
    },
  },
});

// Starts the dashboard fixture (tests/src/bin/dashboard-fixture.rs: a node with PostgreSQL and InfluxDB
// read models, fixture data and tokens) and stops it after the run. The tests read .fixture.json.
import { spawn } from "node:child_process";
import { existsSync, rmSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

const here = path.dirname(fileURLToPath(import.meta.url));

export default async function globalSetup() {
  const fixture = path.join(here, ".fixture.json");
  rmSync(fixture, { force: true });
  const bin = process.env.CUSTODIAN_FIXTURE_BIN || path.join(here, "..", "target", "debug", "dashboard-fixture");
  if (!existsSync(bin)) {
    throw new Error(`${bin} is missing: run 'cargo build --workspace --bins' first (scripts/e2e does)`);
  }
  const child = spawn(bin, [fixture], { stdio: ["pipe", "inherit", "inherit"] });
  const started = Date.now();
  while (!existsSync(fixture)) {
    if (child.exitCode !== null) {
      throw new Error(`the dashboard fixture exited with ${child.exitCode} before it was ready`);
    }
    if (Date.now() - started > 120_000) {
      child.kill("SIGTERM");
      throw new Error("the dashboard fixture was not ready within 120 s");
    }
    await new Promise((r) => setTimeout(r, 100));
  }
  return async () => {
    child.stdin.end();
    await new Promise((resolve) => {
      const t = setTimeout(() => {
        child.kill("SIGKILL");
        resolve();
      }, 20_000);
      child.on("exit", () => {
        clearTimeout(t);
        resolve();
      });
    });
  };
}

// Drives the backoffice like an operator, in Debian's Chromium:
// sign in, find a session by principal, open it, take a screenshot, delete it.
// Usage: node backoffice.mjs BASE_URL USER PASSWORD PRINCIPAL SCREENSHOT.png
// Prints one JSON line: {"found": true, "deleted": true, "key": "..."}.
import { chromium } from 'playwright-core';

const [base, user, password, principal, screenshot] = process.argv.slice(2);
const browser = await chromium.launch({
  executablePath: '/usr/bin/chromium',
  args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
         '--disable-background-networking', '--disable-component-update', '--disable-sync'],
});
const result = { found: false, deleted: false, key: null };
try {
  const page = await browser.newPage({ viewport: { width: 1280, height: 720 } });
  page.setDefaultTimeout(15000);
  await page.goto(`${base}/backoffice`);            // redirected to the sign-in form
  await page.fill('#login input[name=user]', user);
  await page.fill('#login input[name=password]', password);
  await Promise.all([page.waitForURL(`${base}/backoffice`), page.click('#login button')]);
  await page.fill('#search input[name=principal]', principal);
  await Promise.all([page.waitForURL(/principal=/), page.click('#search button')]);
  const link = page.locator('#sessions a').first();
  result.found = (await page.locator('#sessions tr').count()) === 2; // header + one session
  await Promise.all([page.waitForURL(/\/backoffice\/sessions\//), link.click()]);
  result.key = await page.locator('#session code').first().innerText();
  await page.screenshot({ path: screenshot, fullPage: true });
  await Promise.all([page.waitForURL(/message=/), page.click('#delete button')]);
  result.deleted = (await page.locator('.note').innerText()).includes('deleted');
} finally {
  await browser.close();
}
console.log(JSON.stringify(result));

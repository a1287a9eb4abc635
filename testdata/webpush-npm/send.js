// Sends one message through pushrelay with the web-push npm package, the
// library many app servers use. Usage:
//   node send.js SUBSCRIPTION_JSON PAYLOAD [VAPID_PUBLIC VAPID_PRIVATE]
// CONTENT_ENCODING=aesgcm in the environment sends the legacy encoding.
// Prints the HTTP status and Location; exits non-zero on failure.
'use strict';
const webpush = require('web-push');

async function main() {
  const [subJSON, payload, vapidPublic, vapidPrivate] = process.argv.slice(2);
  const subscription = JSON.parse(subJSON);
  const options = { TTL: 120, contentEncoding: process.env.CONTENT_ENCODING || 'aes128gcm' };
  if (vapidPublic && vapidPrivate) {
    options.vapidDetails = {
      subject: 'mailto:interop@example.net',
      publicKey: vapidPublic,
      privateKey: vapidPrivate,
    };
  }
  const res = await webpush.sendNotification(subscription, payload, options);
  console.log(`status ${res.statusCode} location ${res.headers.location}`);
}

main().catch((err) => {
  console.error(`web-push failed: ${err.statusCode || ''} ${err.body || err.message}`);
  process.exit(1);
});

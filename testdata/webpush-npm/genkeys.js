// Prints a VAPID key pair made by web-push: "PUBLIC PRIVATE" (base64url).
'use strict';
const k = require('web-push').generateVAPIDKeys();
console.log(`${k.publicKey} ${k.privateKey}`);

// Service worker for TestFirefox: forwards each push payload to the page.
self.addEventListener("install", e => self.skipWaiting());
self.addEventListener("activate", e => e.waitUntil(self.clients.claim()));
self.addEventListener("push", e => {
  const text = e.data ? e.data.text() : null;
  e.waitUntil(self.clients.matchAll({includeUncontrolled: true, type: "window"}).then(cs => {
    for (const c of cs) c.postMessage({push: text});
  }));
});

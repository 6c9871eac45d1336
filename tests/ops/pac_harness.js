// Runs a PAC file the way a browser does, without DNS: defines the PAC
// helper functions (after Mozilla's pac_utils.js), loads the PAC source and
// prints {host: FindProxyForURL("https://" + host + "/", host)} for the
// hosts given as JSON, passed exactly as written.
//   node pac_harness.js FILE.pac '["www.facebook.com", ...]'
"use strict";
const fs = require("fs");
const vm = require("vm");

function ipv4ToInt(ip) {
  const parts = ip.split(".");
  if (parts.length !== 4 || parts.some((p) => !/^[0-9]+$/.test(p) || Number(p) > 255)) {
    return null;
  }
  return parts.reduce((acc, p) => acc * 256 + Number(p), 0);
}

const sandbox = {
  dnsDomainIs: (host, domain) =>
    host.length >= domain.length && host.substring(host.length - domain.length) === domain,
  shExpMatch: (str, pattern) => {
    const re = pattern.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
    return new RegExp("^" + re + "$").test(str);
  },
  isPlainHostName: (host) => host.indexOf(".") < 0,
  // Browsers resolve names here; the harness has no DNS, so a name that is
  // not an IPv4 literal throws to prove the PAC never asks.
  isInNet: (host, pattern, mask) => {
    const h = ipv4ToInt(host);
    if (h === null) throw new Error("isInNet called with a name: " + host);
    const p = ipv4ToInt(pattern), m = ipv4ToInt(mask);
    return ((h & m) >>> 0) === ((p & m) >>> 0);
  },
  dnsResolve: (host) => { throw new Error("dnsResolve called: " + host); },
  myIpAddress: () => "127.0.0.1",
};
vm.createContext(sandbox);
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), sandbox, { filename: process.argv[2] });

const out = Object.create(null); // so that "__proto__" is a key like any other
for (const host of JSON.parse(process.argv[3])) {
  out[host] = sandbox.FindProxyForURL("https://" + host + "/", host);
}
process.stdout.write(JSON.stringify(out));

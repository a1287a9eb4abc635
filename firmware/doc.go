// Package firmware builds the pushrelay installation packages for gateways:
// a Debian package (.deb, systemd) and an OpenWrt package (.ipk, procd and
// UCI) per architecture, from the static binaries `make cross` leaves in
// dist/.
//
// The package contents are plain files in this directory — debian/ (the
// hardened systemd unit, the default config, the maintainer scripts) and
// openwrt/ (the procd init script, the UCI config, opkg scripts) — listed
// in nfpm-deb.yaml and nfpm-ipk.yaml. Build reads those with nfpm
// (github.com/goreleaser/nfpm/v2), which stays behind this package: callers
// see Package, PackageVersion and the architecture tables. This directory
// is a module of its own so nfpm's dependencies never reach the relay's
// go.mod.
//
// The command is mkpkg:
//
//	cd firmware && go run ./mkpkg -dist ../dist -out ../dist -version "$(git describe --tags --always --dirty)"
package firmware

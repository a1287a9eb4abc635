// Command mkpkg builds the pushrelay packages — .deb for Debian and .ipk
// for OpenWrt 24.10 — from the static binaries `make cross` leaves in
// dist/. Run it from the firmware directory:
//
//	go run ./mkpkg -dist ../dist -out ../dist -version "$(git describe --tags --always --dirty)"
//
// Flags:
//
//	-dist DIR        where pushrelay-linux-<target> are (default ../dist)
//	-out DIR         where the packages go (default: -dist)
//	-version V       git describe output; made a dpkg/opkg version (required)
//	-formats LIST    deb,ipk (default both)
//	-targets LIST    make cross targets, e.g. amd64,armv7 (default all)
//	-ipk-arch T=A,…  OpenWrt architecture(s) for target T, repeatable
//	-deb-arch T=A,…  Debian architecture(s) for target T, repeatable
//	-dir DIR         the firmware directory with nfpm-*.yaml (default .)
//
// OpenWrt names package architectures after the CPU core and opkg installs
// only the ones /etc/opkg.conf lists (`opkg print-architecture`). The
// defaults (firmware.DefaultArch) fit one common target per CPU; for
// another router pass its name, e.g. -ipk-arch armv7=arm_cortex-a9_vfpv3-d16
// (mvebu) or -ipk-arch arm64=aarch64_cortex-a53,aarch64_cortex-a72 (one
// package per name, from the same binary). An empty value
// (-ipk-arch armv6=) leaves that target out.
//
// Time stamps inside the packages come from SOURCE_DATE_EPOCH, else from the
// last commit, so the same commit and binaries give the same packages.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/pushrelay/pushrelay/firmware"
)

func main() {
	err := run(context.Background(), os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	switch {
	case err == nil, errors.Is(err, flag.ErrHelp):
		os.Exit(0)
	case errors.Is(err, errUsage):
		fmt.Fprintf(os.Stderr, "mkpkg: %v\n", err)
		os.Exit(2)
	default:
		fmt.Fprintf(os.Stderr, "mkpkg: %v\n", err)
		os.Exit(1)
	}
}

var errUsage = errors.New("usage")

// archFlag collects -ipk-arch/-deb-arch TARGET=ARCH[,ARCH…] values.
type archFlag map[string][]string

func (a archFlag) String() string { return "" }

func (a archFlag) Set(v string) error {
	t, names, ok := strings.Cut(v, "=")
	if !ok || t == "" {
		return fmt.Errorf("want TARGET=ARCH[,ARCH...], got %q", v)
	}
	a[t] = nil
	for n := range strings.SplitSeq(names, ",") {
		if n = strings.TrimSpace(n); n != "" {
			a[t] = append(a[t], n)
		}
	}
	return nil
}

func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("mkpkg", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		dist     = fs.String("dist", "../dist", "directory with the make cross binaries (pushrelay-linux-<target>)")
		out      = fs.String("out", "", "directory for the packages (default: -dist)")
		describe = fs.String("version", "", "version, as git describe --tags --always --dirty prints it (required)")
		formats  = fs.String("formats", strings.Join(firmware.Formats, ","), "package formats to build")
		targets  = fs.String("targets", strings.Join(firmware.Targets, ","), "make cross targets to package")
		dir      = fs.String("dir", ".", "the firmware directory (nfpm-deb.yaml, nfpm-ipk.yaml and the files they list)")
		ipkArch  = archFlag{}
		debArch  = archFlag{}
	)
	fs.Var(ipkArch, "ipk-arch", "`TARGET=ARCH[,ARCH...]`: OpenWrt architecture name(s) for a target, e.g. armv7=arm_cortex-a9_vfpv3-d16 (repeatable)")
	fs.Var(debArch, "deb-arch", "`TARGET=ARCH[,ARCH...]`: Debian architecture name(s) for a target (repeatable)")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return fmt.Errorf("%w: %v", errUsage, err)
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("%w: unexpected arguments %q", errUsage, fs.Args())
	}
	if *describe == "" {
		return fmt.Errorf("%w: -version is required (e.g. -version \"$(git describe --tags --always --dirty)\")", errUsage)
	}
	version, err := firmware.PackageVersion(*describe)
	if err != nil {
		return fmt.Errorf("%w: -version: %v", errUsage, err)
	}
	if *out == "" {
		*out = *dist
	}
	plan := firmware.Plan{
		Dist:    *dist,
		Version: version,
		Formats: splitList(*formats),
		Targets: splitList(*targets),
		MTime:   mtime(ctx, *dir, getenv),
		Arch:    map[string]map[string][]string{firmware.IPK: ipkArch, firmware.Deb: debArch},
	}
	pkgs, err := plan.Packages()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(*out, 0o755); err != nil {
		return err
	}
	for _, p := range pkgs {
		path := filepath.Join(*out, p.FileName())
		size, err := write(*dir, p, path)
		if err != nil {
			return err
		}
		fmt.Fprintf(stdout, "%s  %d bytes  (%s %s from %s)\n", path, size, p.Format, p.Arch, filepath.Base(p.Binary))
	}
	return nil
}

// write builds p into path through a temporary file, so a failed build
// never leaves a truncated package behind.
func write(dir string, p firmware.Package, path string) (int64, error) {
	f, err := os.CreateTemp(filepath.Dir(path), ".mkpkg-*")
	if err != nil {
		return 0, err
	}
	defer os.Remove(f.Name())
	if err := firmware.Build(dir, p, f); err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Chmod(0o644); err != nil {
		f.Close()
		return 0, err
	}
	st, err := f.Stat()
	if err != nil {
		f.Close()
		return 0, err
	}
	if err := f.Close(); err != nil {
		return 0, err
	}
	return st.Size(), os.Rename(f.Name(), path)
}

func splitList(s string) []string {
	var out []string
	for v := range strings.SplitSeq(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}

// mtime is the time stamp for the files in the packages: SOURCE_DATE_EPOCH
// when set (the reproducible-builds convention), else the time of the last
// commit, else now.
func mtime(ctx context.Context, dir string, getenv func(string) string) time.Time {
	if s := getenv("SOURCE_DATE_EPOCH"); s != "" {
		if n, err := strconv.ParseInt(s, 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	out, err := exec.CommandContext(ctx, "git", "-C", dir, "log", "-1", "--format=%ct").Output()
	if err == nil {
		if n, err := strconv.ParseInt(strings.TrimSpace(string(out)), 10, 64); err == nil {
			return time.Unix(n, 0).UTC()
		}
	}
	return time.Now().UTC()
}

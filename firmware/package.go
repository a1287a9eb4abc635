package firmware

import (
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/goreleaser/nfpm/v2"
	_ "github.com/goreleaser/nfpm/v2/deb" // registers the deb packager
	"github.com/goreleaser/nfpm/v2/files"
	_ "github.com/goreleaser/nfpm/v2/ipk" // registers the ipk packager
)

// Package formats.
const (
	Deb = "deb" // Debian and derivatives: dpkg, systemd
	IPK = "ipk" // OpenWrt 24.10: opkg, procd, UCI
)

// Formats lists the formats in the order mkpkg builds them.
var Formats = []string{Deb, IPK}

// Targets are the builds `make cross` writes to dist/ as
// pushrelay-linux-<target>, in its order.
var Targets = []string{"amd64", "arm64", "armv5", "armv6", "armv7", "mipsle", "mips", "riscv64"}

// BinaryName is the file name `make cross` gives the build for target.
func BinaryName(target string) string { return "pushrelay-linux-" + target }

// debArch gives each target its Debian architecture. armv6 has none: Debian's
// armel is ARMv5 and armhf ARMv7 (Raspberry Pi OS calls its ARMv6 port armhf
// too, so the armv5 package is the one that runs there).
var debArch = map[string][]string{
	"amd64":   {"amd64"},
	"arm64":   {"arm64"},
	"armv5":   {"armel"},
	"armv7":   {"armhf"},
	"mipsle":  {"mipsel"},
	"mips":    {"mips"},
	"riscv64": {"riscv64"},
}

// ipkArch gives each target the OpenWrt package architecture of a common
// OpenWrt target for that CPU. opkg installs a package only when its
// Architecture is one of the `arch` lines in /etc/opkg.conf (see `opkg
// print-architecture` on the device), and OpenWrt names architectures after
// the CPU core, so a router may need another name: mkpkg -ipk-arch
// overrides these (for example armv7=arm_cortex-a9_vfpv3-d16 for mvebu).
// arm64 gets two by default: aarch64_cortex-a53 (most arm64 routers:
// MediaTek Filogic, Qualcomm IPQ807x, mvebu) and aarch64_generic (armsr,
// rockchip).
var ipkArch = map[string][]string{
	"amd64":   {"x86_64"},
	"arm64":   {"aarch64_cortex-a53", "aarch64_generic"},
	"armv5":   {"arm_arm926ej-s"},
	"armv6":   {"arm_arm1176jzf-s_vfp"},
	"armv7":   {"arm_cortex-a7_neon-vfpv4"},
	"mipsle":  {"mipsel_24kc"},
	"mips":    {"mips_24kc"},
	"riscv64": {"riscv64_riscv64"},
}

// DefaultArch returns, for format, the package architecture names of each
// target that has one. The result is a copy the caller may change.
func DefaultArch(format string) map[string][]string {
	var m map[string][]string
	switch format {
	case Deb:
		m = debArch
	case IPK:
		m = ipkArch
	}
	out := make(map[string][]string, len(m))
	for k, v := range m {
		out[k] = slices.Clone(v)
	}
	return out
}

// Package is one package to build.
type Package struct {
	Format  string    // Deb or IPK
	Target  string    // the make cross target the binary was built for
	Arch    string    // the architecture as the format names it
	Binary  string    // path of the pushrelay binary
	Version string    // package version, as PackageVersion returns it
	MTime   time.Time // time stamp of every file in the package; zero means now
}

// FileName is the conventional name of the package file:
// pushrelay_<version>_<arch>.<format>.
func (p Package) FileName() string {
	return fmt.Sprintf("pushrelay_%s_%s.%s", p.Version, p.Arch, p.Format)
}

// Plan is what to build from one dist directory.
type Plan struct {
	Dist    string    // directory holding pushrelay-linux-<target>
	Version string    // package version (PackageVersion's result)
	Formats []string  // empty means Formats
	Targets []string  // empty means Targets
	MTime   time.Time // see Package.MTime
	// Arch overrides DefaultArch per format: Arch[IPK]["armv7"] =
	// {"arm_cortex-a9_vfpv3-d16"}. Several names build one package each
	// from the same binary.
	Arch map[string]map[string][]string
}

// Packages lists the packages the plan builds: every format for every
// target that format has an architecture for. A target asked for by name
// whose binary is missing is an error; so is a plan that builds nothing.
func (pl Plan) Packages() ([]Package, error) {
	formats := pl.Formats
	if len(formats) == 0 {
		formats = Formats
	}
	targets := pl.Targets
	if len(targets) == 0 {
		targets = Targets
	}
	for _, t := range targets {
		if !slices.Contains(Targets, t) {
			return nil, fmt.Errorf("unknown target %q (known: %s)", t, strings.Join(Targets, ", "))
		}
		if _, err := os.Stat(filepath.Join(pl.Dist, BinaryName(t))); err != nil {
			return nil, fmt.Errorf("target %s: %w (run make cross first)", t, err)
		}
	}
	var out []Package
	for _, f := range formats {
		if !slices.Contains(Formats, f) {
			return nil, fmt.Errorf("unknown format %q (known: %s)", f, strings.Join(Formats, ", "))
		}
		arch := DefaultArch(f)
		maps.Copy(arch, pl.Arch[f])
		for _, t := range targets {
			for _, a := range arch[t] {
				out = append(out, Package{
					Format:  f,
					Target:  t,
					Arch:    a,
					Binary:  filepath.Join(pl.Dist, BinaryName(t)),
					Version: pl.Version,
					MTime:   pl.MTime,
				})
			}
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("nothing to build for formats %v and targets %v", formats, targets)
	}
	return out, nil
}

// Build writes package p to w. dir is the directory holding
// nfpm-<format>.yaml and the files it lists (this package's directory);
// paths in the YAML are relative to it, and ${ARCH}, ${VERSION} and
// ${BINARY} are the only variables it sees.
func Build(dir string, p Package, w io.Writer) error {
	if p.Version == "" || p.Arch == "" || p.Binary == "" {
		return fmt.Errorf("build %s: version, arch and binary are required", p.FileName())
	}
	bin, err := filepath.Abs(p.Binary)
	if err != nil {
		return fmt.Errorf("build %s: %w", p.FileName(), err)
	}
	if _, err := os.Stat(bin); err != nil {
		return fmt.Errorf("build %s: %w", p.FileName(), err)
	}
	vars := map[string]string{"ARCH": p.Arch, "VERSION": p.Version, "BINARY": bin}
	cfgPath := filepath.Join(dir, "nfpm-"+p.Format+".yaml")
	cfg, err := nfpm.ParseFileWithEnvMapping(cfgPath, func(k string) string { return vars[k] })
	if err != nil {
		return fmt.Errorf("build %s: parse %s: %w", p.FileName(), cfgPath, err)
	}
	info, err := cfg.Get(p.Format)
	if err != nil {
		return fmt.Errorf("build %s: %w", p.FileName(), err)
	}
	info = nfpm.WithDefaults(info)
	// Set the architecture the way each packager honours it as given,
	// without its Go-name translation table (nfpm's ipk table gives
	// Debian-style names that OpenWrt's opkg rejects).
	info.Arch = p.Arch
	switch p.Format {
	case Deb:
		info.Deb.Arch = p.Arch
	case IPK:
		info.IPK.Arch = p.Arch
	}
	if !p.MTime.IsZero() {
		info.MTime = p.MTime.UTC()
	}
	for _, c := range info.Contents {
		if c.Type != files.TypeSymlink {
			c.Source = relTo(dir, c.Source)
		}
	}
	for _, s := range []*string{&info.Scripts.PreInstall, &info.Scripts.PostInstall, &info.Scripts.PreRemove, &info.Scripts.PostRemove} {
		*s = relTo(dir, *s)
	}
	if err := info.Validate(); err != nil {
		return fmt.Errorf("build %s: %w", p.FileName(), err)
	}
	packager, err := nfpm.Get(p.Format)
	if err != nil {
		return fmt.Errorf("build %s: %w", p.FileName(), err)
	}
	if err := packager.Package(info, w); err != nil {
		return fmt.Errorf("build %s: %w", p.FileName(), err)
	}
	return nil
}

// relTo resolves a relative path in the YAML against dir.
func relTo(dir, path string) string {
	if path == "" || filepath.IsAbs(path) {
		return path
	}
	return filepath.Join(dir, path)
}

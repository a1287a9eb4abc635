package firmware

import (
	"bytes"
	"os/exec"
	"testing"
)

func TestPackageVersion(t *testing.T) {
	cases := map[string]string{
		"v0.1.0":                   "0.1.0",
		"0.1.0":                    "0.1.0",
		"v1.2":                     "1.2",
		"v0.1.0-rc.1":              "0.1.0~rc.1",
		"v0.1.0-rc1-2-gdeadbee":    "0.1.0~rc1+git2.gdeadbee",
		"v0.1.0-3-gabc1234":        "0.1.0+git3.gabc1234",
		"v0.1.0-3-gabc1234-dirty":  "0.1.0+git3.gabc1234.dirty",
		"v0.1.0-dirty":             "0.1.0+dirty",
		"v1.0.0+build.7":           "1.0.0+build.7",
		"0a1b2c3":                  "0.0.0~git0a1b2c3",
		"0a1b2c3-dirty":            "0.0.0~git0a1b2c3+dirty",
		"5a0099f0c1d2e3f4a5b6c7d8": "0.0.0~git5a0099f0c1d2e3f4a5b6c7d8",
		"1234567":                  "0.0.0~git1234567", // an all-digit hash is still a hash
		"dev":                      "0.0.0~dev",
		"my_branch/x-dirty":        "0.0.0~my.branch.x+dirty",
		" v0.2.0\n":                "0.2.0",
	}
	for in, want := range cases {
		got, err := PackageVersion(in)
		if err != nil || got != want {
			t.Errorf("PackageVersion(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	for _, bad := range []string{"", "  ", "-dirty", "///"} {
		if got, err := PackageVersion(bad); err == nil {
			t.Errorf("PackageVersion(%q) = %q, want an error", bad, got)
		}
	}
}

// TestPackageVersionOrder checks with dpkg itself that the versions are
// valid and upgrade in the order the commits were made. opkg compares
// versions with the same algorithm (libopkg/pkg.c verrevcmp is dpkg's).
func TestPackageVersionOrder(t *testing.T) {
	dpkg, err := exec.LookPath("dpkg")
	if err != nil {
		t.Skip("dpkg not installed: cannot check version order")
	}
	// Oldest first, as a project's history produces them.
	history := []string{
		"0a1b2c3", "0a1b2c3-dirty",
		"v0.1.0-rc.1", "v0.1.0-rc.1-4-g1111111",
		"v0.1.0", "v0.1.0-dirty", "v0.1.0-3-gabc1234", "v0.1.0-3-gabc1234-dirty", "v0.1.0-12-g2222222",
		"v0.1.1-rc.1", "v0.1.1", "v0.2.0", "v1.0.0",
	}
	var prev string
	for _, d := range history {
		v, err := PackageVersion(d)
		if err != nil {
			t.Fatalf("%s: %v", d, err)
		}
		// dpkg warns about (and rejects) a bad version on stderr.
		var stderr bytes.Buffer
		cmd := exec.Command(dpkg, "--compare-versions", v, "eq", v)
		cmd.Stderr = &stderr
		if err := cmd.Run(); err != nil || stderr.Len() > 0 {
			t.Errorf("dpkg rejects %q (from %q): %v %s", v, d, err, stderr.String())
		}
		if prev != "" {
			if err := exec.Command(dpkg, "--compare-versions", prev, "lt", v).Run(); err != nil {
				t.Errorf("dpkg does not order %q before %q", prev, v)
			}
		}
		prev = v
	}
}

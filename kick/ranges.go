package kick

import (
	"fmt"
	"net/netip"
	"strings"
)

// Ranges are where a claimed wake address is believed without STUN: the
// carrier's device ranges, overall and per mobile network.
type Ranges struct {
	// CIDRs hold for every device.
	CIDRs []netip.Prefix
	// Networks hold for devices whose hello named that mobile network,
	// keyed "mcc-mnc" as the device sent them (e.g. "214-07").
	Networks map[string][]netip.Prefix
}

// Allows reports whether a claimed address inside network may be woken.
func (r *Ranges) Allows(a netip.Addr, network string) bool {
	if r == nil {
		return false
	}
	a = a.Unmap()
	for _, p := range r.CIDRs {
		if p.Contains(a) {
			return true
		}
	}
	if network != "" {
		for _, p := range r.Networks[network] {
			if p.Contains(a) {
				return true
			}
		}
	}
	return false
}

// ParseCIDRs parses a comma-separated list of CIDRs ("" is none). A bare
// address is a /32 or /128.
func ParseCIDRs(s string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		p, err := netip.ParsePrefix(f)
		if err != nil {
			a, aerr := netip.ParseAddr(f)
			if aerr != nil {
				return nil, fmt.Errorf("bad CIDR %q: %w", f, err)
			}
			p = netip.PrefixFrom(a, a.BitLen())
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// NetworkKey is the key of Ranges.Networks for a hello's mobilenetwork.
func NetworkKey(mcc, mnc string) string {
	if mcc == "" && mnc == "" {
		return ""
	}
	return mcc + "-" + mnc
}

package ece

import (
	"fmt"
	"strings"
)

// MaxHeaderLength bounds the header values ParseHeaderList and
// ParseHeaderParams will look at.
const MaxHeaderLength = 8 << 10

// ParseHeaderList parses an Encryption or Crypto-Key header value: a
// comma-separated list of elements, each a semicolon-separated list of
// name=value parameters, for example
//
//	keyid="p256dh";dh=BNoRD...,p256ecdsa=BA1Hx...
//
// Names are case-insensitive and returned lower-cased; values may be
// tokens or quoted strings (quotes removed, backslash escapes resolved);
// whitespace around separators and '=' is ignored. Empty elements and
// empty parameters are skipped. Within one element the first occurrence of
// a name wins. A parameter without '=', an empty name, an unterminated
// quoted string or a value longer than MaxHeaderLength is an ErrMalformed
// error.
func ParseHeaderList(h string) ([]map[string]string, error) {
	if len(h) > MaxHeaderLength {
		return nil, fmt.Errorf("%w: header is %d bytes, longer than %d", ErrMalformed, len(h), MaxHeaderLength)
	}
	var (
		list []map[string]string
		cur  map[string]string
	)
	for rest := h; ; {
		param, sep, tail, err := nextParam(rest)
		if err != nil {
			return nil, err
		}
		if param != "" {
			name, value, err := splitParam(param)
			if err != nil {
				return nil, err
			}
			if cur == nil {
				cur = make(map[string]string)
			}
			if _, dup := cur[name]; !dup {
				cur[name] = value
			}
		}
		if sep != ';' && cur != nil {
			list = append(list, cur)
			cur = nil
		}
		if sep == 0 {
			return list, nil
		}
		rest = tail
	}
}

// ParseHeaderParams is a lenient, flattened form of ParseHeaderList for
// callers that only need to look up a parameter: it treats ',' and ';'
// alike, returns every well-formed name=value pair (lower-cased names;
// the first occurrence of a name wins) and silently skips malformed ones.
// It never returns nil.
func ParseHeaderParams(h string) map[string]string {
	m := make(map[string]string)
	if len(h) > MaxHeaderLength {
		return m
	}
	for rest := h; ; {
		param, sep, tail, err := nextParam(rest)
		if err != nil {
			// Unterminated quote: nothing after it is trustworthy.
			return m
		}
		if param != "" {
			if name, value, err := splitParam(param); err == nil {
				if _, dup := m[name]; !dup {
					m[name] = value
				}
			}
		}
		if sep == 0 {
			return m
		}
		rest = tail
	}
}

// nextParam returns the raw text of the next parameter in s (trimmed), the
// separator that ended it (',' or ';', or 0 at the end of s) and the
// remainder after the separator. Separators inside quoted strings do not
// count.
func nextParam(s string) (param string, sep byte, rest string, err error) {
	inQuote := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case inQuote && c == '\\':
			i++ // skip the escaped character
		case c == '"':
			inQuote = !inQuote
		case !inQuote && (c == ',' || c == ';'):
			return strings.TrimSpace(s[:i]), c, s[i+1:], nil
		}
	}
	if inQuote {
		return "", 0, "", fmt.Errorf("%w: unterminated quoted string", ErrMalformed)
	}
	return strings.TrimSpace(s), 0, "", nil
}

// splitParam splits name=value, lower-casing the name and unquoting the
// value.
func splitParam(p string) (name, value string, err error) {
	n, v, ok := strings.Cut(p, "=")
	if !ok {
		return "", "", fmt.Errorf("%w: parameter %q has no value", ErrMalformed, truncate(p))
	}
	name = strings.ToLower(strings.TrimSpace(n))
	if name == "" || strings.ContainsAny(name, " \t\"") {
		return "", "", fmt.Errorf("%w: bad parameter name in %q", ErrMalformed, truncate(p))
	}
	v = strings.TrimSpace(v)
	if strings.HasPrefix(v, `"`) {
		if len(v) < 2 || !strings.HasSuffix(v, `"`) {
			return "", "", fmt.Errorf("%w: bad quoted value for %q", ErrMalformed, name)
		}
		var b strings.Builder
		body := v[1 : len(v)-1]
		for i := 0; i < len(body); i++ {
			c := body[i]
			if c == '\\' && i+1 < len(body) {
				i++
				c = body[i]
			} else if c == '"' || c == '\\' {
				return "", "", fmt.Errorf("%w: bad quoted value for %q", ErrMalformed, name)
			}
			b.WriteByte(c)
		}
		return name, b.String(), nil
	}
	if strings.ContainsAny(v, "\" \t") {
		return "", "", fmt.Errorf("%w: bad value for %q", ErrMalformed, name)
	}
	return name, v, nil
}

// truncate shortens attacker-controlled text before it goes into an error.
func truncate(s string) string {
	const max = 32
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}

package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
)

// runUCIConfig is `pushrelay uci-config FILE`: it renders the first
// `config pushrelay` section of an OpenWrt UCI file (/etc/config/pushrelay)
// as the relay's YAML config on stdout. Options are named exactly like the
// config keys; `enabled` belongs to the init script and is skipped. The
// OpenWrt init script runs it before every start, so the UCI file is the
// one place an operator edits.
func runUCIConfig(args []string, stdout io.Writer) error {
	if len(args) != 1 {
		return fmt.Errorf("%w (uci-config FILE)", errUsage)
	}
	data, err := os.ReadFile(args[0])
	if err != nil {
		return cfgErr("read %s: %v", args[0], errors.Unwrap(err))
	}
	opts, err := parseUCI(data)
	if err != nil {
		return cfgErr("%s: %v", args[0], err)
	}
	var out bytes.Buffer
	fmt.Fprintf(&out, "# rendered from %s by pushrelay uci-config; edit that file instead\n", args[0])
	for _, o := range opts {
		fmt.Fprintf(&out, "%s: %q\n", o.key, o.value)
	}
	_, err = stdout.Write(out.Bytes())
	return err
}

type uciOption struct{ key, value string }

// parseUCI reads UCI syntax: `config TYPE ['NAME']` opens a section,
// `option KEY 'VALUE'` sets a value (quotes optional), `#` comments. Only
// the first section of type pushrelay counts; lists are not config keys.
func parseUCI(data []byte) ([]uciOption, error) {
	var (
		opts    []uciOption
		inOurs  bool
		seenOne bool
	)
	sc := bufio.NewScanner(bytes.NewReader(data))
	for n := 1; sc.Scan(); n++ {
		words, err := uciWords(sc.Text())
		if err != nil {
			return nil, fmt.Errorf("line %d: %v", n, err)
		}
		if len(words) == 0 {
			continue
		}
		switch words[0] {
		case "config":
			if len(words) < 2 || len(words) > 3 {
				return nil, fmt.Errorf("line %d: want config TYPE ['NAME']", n)
			}
			inOurs = words[1] == "pushrelay" && !seenOne
			if inOurs {
				seenOne = true
			}
		case "option":
			if len(words) != 3 {
				return nil, fmt.Errorf("line %d: want option KEY 'VALUE'", n)
			}
			if !inOurs || words[1] == "enabled" {
				continue
			}
			if _, ok := findSetting(words[1]); !ok {
				return nil, fmt.Errorf("line %d: unknown option %q", n, words[1])
			}
			opts = append(opts, uciOption{words[1], words[2]})
		case "list":
			if inOurs {
				return nil, fmt.Errorf("line %d: list %q: pushrelay has no list options", n, strings.Join(words[1:2], ""))
			}
		default:
			return nil, fmt.Errorf("line %d: unknown statement %q", n, words[0])
		}
	}
	if !seenOne {
		return nil, errors.New("no 'config pushrelay' section")
	}
	return opts, nil
}

// uciWords splits a UCI line into words, honouring single and double
// quotes and dropping a trailing # comment.
func uciWords(line string) ([]string, error) {
	var (
		words []string
		cur   strings.Builder
		quote byte
		have  bool
	)
	for i := 0; i < len(line); i++ {
		c := line[i]
		switch {
		case quote != 0:
			if c == quote {
				quote = 0
			} else {
				cur.WriteByte(c)
			}
		case c == '\'' || c == '"':
			quote, have = c, true
		case c == '#':
			i = len(line)
		case c == ' ' || c == '\t':
			if have {
				words = append(words, cur.String())
				cur.Reset()
				have = false
			}
		default:
			cur.WriteByte(c)
			have = true
		}
	}
	if quote != 0 {
		return nil, errors.New("unterminated quote")
	}
	if have {
		words = append(words, cur.String())
	}
	return words, nil
}

//go:build !linux

package bench

import "errors"

// diskWritten is Linux's /sys only.
func diskWritten(dir string) (int64, string, error) {
	return 0, "", errors.ErrUnsupported
}

//go:build nethttpomithttp2

package main

// The end-to-end tests' daemon leaves out net/http's HTTP/2 too, as the
// gateway builds do (make cross).
func init() { binTags = append(binTags, "nethttpomithttp2") }

//go:build nofasthttp

package main

// The end-to-end tests' daemon serves the endpoint with net/http too.
func init() { binTags = append(binTags, "nofasthttp") }

// Command pushrelay is the push relay appliance: a Web Push server for the
// devices on its network, and the tools to try it.
//
//	pushrelay run [--config FILE] [flags]   the daemon
//	pushrelay check-config [flags]          validate the configuration and exit
//	pushrelay check-store [flags]           verify the stopped relay's store
//	pushrelay salvage [flags]               copy what is readable of a damaged store
//	pushrelay device [flags]                a device: register, print, ack
//	pushrelay send [flags] ENDPOINT         an app server: post one message
//	pushrelay bench SCENARIO [flags]        measure the relay
//	pushrelay keygen FILE                   a VAPID key pair for an app server
//	pushrelay uci-config FILE               render an OpenWrt UCI file as the YAML config
//	pushrelay version                       print version, commit and target
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.LookupEnv, os.Stdout, os.Stderr)
	stop()
	os.Exit(exitCode(err, os.Stderr))
}

// settingDefault is the default value of a configuration key, for the
// load tools.
func settingDefault(key string) string {
	s, _ := findSetting(key)
	return s.def
}

func exitCode(err error, stderr io.Writer) int {
	switch {
	case err == nil:
		return 0
	case errors.Is(err, flag.ErrHelp):
		return 0
	}
	fmt.Fprintf(stderr, "pushrelay: %v\n", err)
	var ce *configError
	if errors.As(err, &ce) || errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

var errUsage = errors.New("usage: pushrelay run|check-config|check-store|salvage|device|send|keygen|keys|uci-config|bench|version [flags] (pushrelay COMMAND -h for help)")

// run dispatches a subcommand. It is main without the process: tests call
// it directly.
func run(ctx context.Context, args []string, getenv func(string) (string, bool), stdout, stderr io.Writer) error {
	if len(args) == 0 {
		return errUsage
	}
	cmd, rest := args[0], args[1:]
	switch cmd {
	case "run":
		cfg, err := loadConfig("pushrelay run", rest, getenv, stderr)
		if err != nil {
			return err
		}
		return runDaemon(ctx, cfg, stdout, stderr)
	case "check-config":
		cfg, err := loadConfig("pushrelay check-config", rest, getenv, stderr)
		if err != nil {
			return err
		}
		if err := checkDataDirNoWrite(cfg.DataDir); err != nil {
			return err
		}
		fmt.Fprintln(stdout, "configuration ok")
		cfg.dump(stdout)
		return nil
	case "check-store":
		return runCheckStore(rest, getenv, stdout, stderr)
	case "salvage":
		return runSalvage(rest, getenv, stdout, stderr)
	case "keygen":
		return runKeygen(rest, stdout)
	case "keys":
		return runKeys(rest, stdout, stderr)
	case "uci-config":
		return runUCIConfig(rest, stdout)
	case "version":
		fmt.Fprintln(stdout, versionString())
		return nil
	case "-h", "--help", "help":
		fmt.Fprintln(stdout, errUsage.Error())
		return nil
	}
	if ok, err := runDevTool(ctx, cmd, rest, stdout, stderr); ok {
		return err
	}
	return errUsage
}

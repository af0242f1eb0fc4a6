// Package deploy holds one helper (reading the Dockerfile); its tests check that the deployment files at
// the repository root (fly.toml and Dockerfile) agree with the binaries they
// run — process names and commands, ports, health check paths, the drain
// timeout against Fly's kill timeout, the kill signal against the signals
// the binaries drain on, the autostop settings, and the connection limits. Run them
// with `go test ./deploy/`; they need neither Docker nor a Fly account.
package deploy

// Package executor runs plans on servers: the ssh and local methods, the
// per-server FIFO loop, the pull agent, and process supervision.
package executor

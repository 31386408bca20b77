// Package proc runs the processes of whole-system test beds outside `go
// test` (make bench-e2e, make chaos): queue-worker daemons from the built
// binary, configured through env as operators do, and private redis-servers
// that a run may kill and restart.
package proc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// FreePort returns a TCP port on loopback that was free a moment ago.
func FreePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

// DaemonOptions describe one queue-worker process.
type DaemonOptions struct {
	// Bin is the queue-worker binary; ConfigDir holds default.yaml and
	// custom-environment-variables.yaml.
	Bin, ConfigDir string
	// Env is the daemon's environment on top of PATH, HOST, PORT.
	Env map[string]string
	// Stderr receives its logs (nil: discarded).
	Stderr io.Writer
	// ReadyTimeout bounds the wait for /readyz (default 30s).
	ReadyTimeout time.Duration
}

// Daemon is a running queue-worker.
type Daemon struct {
	cmd  *exec.Cmd
	port int
	done chan struct{}
}

// StartDaemon starts a daemon and waits until it is ready.
func StartDaemon(o DaemonOptions) (*Daemon, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	d := &Daemon{port: port, done: make(chan struct{})}
	d.cmd = exec.Command(o.Bin, "run", "--config-dir", o.ConfigDir)
	d.cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "HOST=127.0.0.1", "PORT=" + strconv.Itoa(port)}
	for k, v := range o.Env {
		d.cmd.Env = append(d.cmd.Env, k+"="+v)
	}
	d.cmd.Stderr = o.Stderr
	if err := d.cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", o.Bin, err)
	}
	go func() { _ = d.cmd.Wait(); close(d.done) }()
	timeout := o.ReadyTimeout
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	for deadline := time.Now().Add(timeout); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		select {
		case <-d.done:
			return nil, fmt.Errorf("queue-worker exited before it was ready (%v)", d.cmd.ProcessState)
		default:
		}
		resp, err := http.Get(d.URL("/readyz"))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return d, nil
			}
		}
	}
	d.Kill()
	return nil, fmt.Errorf("queue-worker was not ready within %s", timeout)
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.cmd.Process.Pid }

// URL is a path on the daemon's HTTP server.
func (d *Daemon) URL(path string) string { return "http://127.0.0.1:" + strconv.Itoa(d.port) + path }

// Stop sends SIGTERM and waits for the exit.
func (d *Daemon) Stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	<-d.done
}

// Kill sends SIGKILL and waits for the exit.
func (d *Daemon) Kill() {
	_ = d.cmd.Process.Kill()
	<-d.done
}

// Metric reads one series from /metrics (name with its labels, as
// exposed), 0 if it is absent.
func (d *Daemon) Metric(series string) float64 {
	resp, err := http.Get(d.URL("/metrics"))
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if v, ok := strings.CutPrefix(line, series+" "); ok {
			f, _ := strconv.ParseFloat(strings.TrimSpace(v), 64)
			return f
		}
	}
	return 0
}

// Status reads a field of the daemon's /proc status (VmRSS, RssAnon) in
// bytes.
func (d *Daemon) Status(field string) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", d.Pid()))
	if err != nil {
		return 0
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(v)
			if len(f) == 0 {
				return 0
			}
			kb, _ := strconv.ParseFloat(f[0], 64)
			return kb * 1024
		}
	}
	return 0
}

// RedisOptions describe a private redis-server.
type RedisOptions struct {
	// AppendOnly turns AOF on (fsync every second), so a SIGKILL loses at
	// most about a second of writes, as in production.
	AppendOnly bool
}

// Redis is a private redis-server on a free port and a temp dir, which a
// run may kill and restart on the same port and data.
type Redis struct {
	opts   RedisOptions
	port   int
	dir    string
	cmd    *exec.Cmd
	Client *redis.Client
}

// StartRedis starts a private redis-server.
func StartRedis(o RedisOptions) (*Redis, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "qw-redis-")
	if err != nil {
		return nil, err
	}
	r := &Redis{opts: o, port: port, dir: dir}
	r.Client = redis.NewClient(&redis.Options{Addr: r.Addr()})
	if err := r.Start(); err != nil {
		r.Close()
		return nil, err
	}
	return r, nil
}

// Addr is host:port.
func (r *Redis) Addr() string { return "127.0.0.1:" + strconv.Itoa(r.port) }

// Port is the server's port.
func (r *Redis) Port() int { return r.port }

// Start (re)starts the server on its port and data dir and waits for it.
func (r *Redis) Start() error {
	aof := "no"
	if r.opts.AppendOnly {
		aof = "yes"
	}
	r.cmd = exec.Command("redis-server", "--bind", "127.0.0.1", "--port", strconv.Itoa(r.port), "--save", "",
		"--appendonly", aof, "--appendfsync", "everysec", "--dir", r.dir)
	if err := r.cmd.Start(); err != nil {
		return fmt.Errorf("starting redis-server: %w", err)
	}
	for range 200 {
		if r.Client.Ping(context.Background()).Err() == nil {
			return nil
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("private redis-server did not start")
}

// Kill sends SIGKILL to the server and waits for it.
func (r *Redis) Kill() {
	if r.cmd != nil && r.cmd.Process != nil {
		_ = r.cmd.Process.Kill()
		_ = r.cmd.Wait()
	}
}

// Close kills the server and removes its data.
func (r *Redis) Close() {
	_ = r.Client.Close()
	r.Kill()
	_ = os.RemoveAll(r.dir)
}

// Proxy forwards TCP connections from a loopback port to a target, and can
// cut the target off: Down closes the listener and every connection (new
// ones are refused, as if the server were stopped), Up listens again on the
// same port.
type Proxy struct {
	target string
	port   int
	mu     sync.Mutex
	ln     net.Listener
	conns  map[net.Conn]bool
	wg     sync.WaitGroup
}

// StartProxy forwards a free loopback port to target (host:port).
func StartProxy(target string) (*Proxy, error) {
	port, err := FreePort()
	if err != nil {
		return nil, err
	}
	p := &Proxy{target: target, port: port, conns: map[net.Conn]bool{}}
	return p, p.Up()
}

// Addr is the proxy's host:port.
func (p *Proxy) Addr() string { return "127.0.0.1:" + strconv.Itoa(p.port) }

// Up listens (again) and forwards.
func (p *Proxy) Up() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		return nil
	}
	ln, err := net.Listen("tcp", p.Addr())
	if err != nil {
		return fmt.Errorf("proxy for %s: %w", p.target, err)
	}
	p.ln = ln
	p.wg.Add(1)
	go p.accept(ln)
	return nil
}

// Down refuses new connections and resets the open ones.
func (p *Proxy) Down() {
	p.mu.Lock()
	ln := p.ln
	p.ln = nil
	for c := range p.conns {
		_ = c.Close()
	}
	clear(p.conns)
	p.mu.Unlock()
	if ln != nil {
		_ = ln.Close()
	}
	p.wg.Wait()
}

func (p *Proxy) accept(ln net.Listener) {
	defer p.wg.Done()
	for {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		up, err := net.DialTimeout("tcp", p.target, 5*time.Second)
		if err != nil {
			_ = c.Close()
			continue
		}
		p.mu.Lock()
		if p.ln != ln { // went down meanwhile
			p.mu.Unlock()
			_ = c.Close()
			_ = up.Close()
			return
		}
		p.conns[c], p.conns[up] = true, true
		p.mu.Unlock()
		p.wg.Add(2)
		go p.pipe(c, up)
		go p.pipe(up, c)
	}
}

func (p *Proxy) pipe(dst, src net.Conn) {
	defer p.wg.Done()
	_, _ = io.Copy(dst, src)
	_ = dst.Close()
	_ = src.Close()
	p.mu.Lock()
	delete(p.conns, dst)
	delete(p.conns, src)
	p.mu.Unlock()
}

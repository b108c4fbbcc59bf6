package main

import (
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"
	"syscall"
	"time"
)

// nginxProc is Debian's nginx serving one file at /asset, on loopback, with
// a configuration of its own under dir: one worker, sendfile and tcp_nopush
// as in Debian's default nginx.conf, no access log.
type nginxProc struct {
	cmd    *exec.Cmd
	addr   string
	worker int
	dir    string
}

func startNginx(bin, dir, file string) (*nginxProc, error) {
	if err := os.RemoveAll(dir); err != nil {
		return nil, err
	}

	if err := os.MkdirAll(filepath.Join(dir, "temp"), 0o755); err != nil {
		return nil, err
	}

	port, err := freePort()
	if err != nil {
		return nil, err
	}

	addr := fmt.Sprintf("127.0.0.1:%d", port)

	// A master running as root drops its workers to "user"; as anyone else
	// the directive is ignored.
	userLine := ""
	if os.Geteuid() == 0 {
		u, err := user.Current()
		if err != nil {
			return nil, err
		}

		userLine = "user " + u.Username + ";"
	}

	temp := filepath.Join(dir, "temp")
	conf := fmt.Sprintf(`# written by imager-bench
daemon off;
master_process on;
worker_processes 1;
%s
pid %s/nginx.pid;
error_log %s/error.log warn;
events { worker_connections 64; }
http {
	access_log off;
	sendfile on;
	tcp_nopush on;
	default_type application/octet-stream;
	client_body_temp_path %s/body;
	proxy_temp_path %s/proxy;
	fastcgi_temp_path %s/fastcgi;
	uwsgi_temp_path %s/uwsgi;
	scgi_temp_path %s/scgi;
	server {
		listen %s;
		location = /asset { alias %s; }
	}
}
`, userLine, dir, dir, temp, temp, temp, temp, temp, addr, file)

	confPath := filepath.Join(dir, "nginx.conf")
	if err := os.WriteFile(confPath, []byte(conf), 0o644); err != nil {
		return nil, err
	}

	cmd := exec.Command(bin, "-p", dir, "-c", confPath, "-e", filepath.Join(dir, "error.log"))
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr

	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("nginx: %w (make bench-imager unpacks Debian's)", err)
	}

	n := &nginxProc{cmd: cmd, addr: addr, dir: dir}

	for deadline := time.Now().Add(10 * time.Second); ; {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			break
		}

		if time.Now().After(deadline) {
			n.stop()

			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))

			return nil, fmt.Errorf("nginx did not listen on %s within 10 s: %s", addr, log)
		}

		time.Sleep(50 * time.Millisecond)
	}

	if n.worker, err = onlyChild(cmd.Process.Pid); err != nil {
		n.stop()
		return nil, fmt.Errorf("nginx worker: %w", err)
	}

	return n, nil
}

func (n *nginxProc) url() string { return "http://" + n.addr + "/asset" }

func (n *nginxProc) stop() {
	_ = n.cmd.Process.Signal(syscall.SIGQUIT)

	done := make(chan struct{})

	go func() {
		_ = n.cmd.Wait()
		close(done)
	}()

	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = n.cmd.Process.Kill()
		<-done
	}
}

// freePort asks the kernel for a free loopback port (nginx cannot be told
// to pick one and say which).
func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()

	return l.Addr().(*net.TCPAddr).Port, nil
}

func nginxVersion(bin string) string {
	out, err := exec.Command(bin, "-v").CombinedOutput()
	if err != nil {
		return "unavailable (" + err.Error() + ")"
	}

	return strings.TrimSpace(string(out))
}

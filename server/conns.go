package server

import (
	"container/list"
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Connection budget. Every connection costs a file descriptor, and one in
// a download or a registry pull another for the file it reads; kiln keeps
// fdReserve descriptors for its own files (registry, builds, assets) and
// admits at most half of the rest as connections. Beyond that, the oldest
// connection with no request in flight (idle keep-alive, idle HTTP/2, or
// accepted but silent) is closed to make room, as nginx reuses idle
// keep-alive connections. When every connection is busy, healthReserve
// more are let in for health checks only (/healthz, /readyz, gRPC health),
// so that an orchestrator still sees kiln alive; anything else on them is
// answered 503.
const (
	fdReserve     = 256
	healthReserve = 64
	minConnLimit  = 64
)

// fileLimit is the process's soft RLIMIT_NOFILE. Go raises the soft limit
// to the hard limit at start (since Go 1.19), so this is the hard limit
// unless something lowered it.
func fileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}

	return rl.Cur, nil
}

// raiseFileLimit sets the soft RLIMIT_NOFILE to the hard limit, in case the
// runtime did not (it does on Linux since Go 1.19), and returns it.
func raiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}

	if rl.Cur < rl.Max {
		rl.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
			return fileLimit()
		}
	}

	return rl.Cur, nil
}

// connLimitFor is the default connection cap for a file-descriptor limit.
func connLimitFor(nofile uint64) int {
	n := (int64(min(nofile, 1<<30)) - fdReserve - healthReserve) / 2

	return int(max(n, minConnLimit))
}

// connLimiter caps the connections a listener admits and tracks which are
// idle, through the http.Server's ConnState hook.
type connLimiter struct {
	max     int
	reserve int
	logger  *slog.Logger

	mu       sync.Mutex
	conns    map[net.Conn]*connEntry
	over     map[*connEntry]struct{} // the health-only ones
	idle     list.List               // *connEntry, least recently idle first
	normal   int                     // admitted within max
	overflow int                     // admitted for health checks only
	evicted  atomic.Int64
	refused  atomic.Int64
	lastWarn time.Time
}

type connEntry struct {
	conn net.Conn
	idle *list.Element
	// overflow marks a connection admitted past the cap: it may only ask
	// for health checks until a normal slot frees up.
	overflow atomic.Bool
}

func newConnLimiter(maxConns, reserve int, logger *slog.Logger) *connLimiter {
	return &connLimiter{max: maxConns, reserve: reserve, logger: logger, conns: map[net.Conn]*connEntry{}, over: map[*connEntry]struct{}{}}
}

// listener wraps lis so that it admits connections through the limiter.
func (l *connLimiter) listener(lis net.Listener) net.Listener {
	return &limitListener{Listener: lis, lim: l}
}

type limitListener struct {
	net.Listener

	lim *connLimiter
}

func (ll *limitListener) Accept() (net.Conn, error) {
	for {
		c, err := ll.Listener.Accept()
		if err != nil {
			return nil, err
		}

		if ll.lim.admit(c) {
			return c, nil
		}

		go refuse(c)
	}
}

// refuse tells a plain-HTTP client that kiln is full and closes the
// connection; TLS and HTTP/2 clients just see it closed.
func refuse(c net.Conn) {
	const text = "kiln is at its connection limit; retry later\n"

	if _, isTLS := c.(*tls.Conn); !isTLS {
		c.SetWriteDeadline(time.Now().Add(time.Second))                                                  //nolint:errcheck // best effort
		io.WriteString(c, "HTTP/1.1 503 Service Unavailable\r\nConnection: close\r\nRetry-After: 5\r\n"+ //nolint:errcheck // best effort
			"Content-Type: text/plain; charset=utf-8\r\nContent-Length: "+strconv.Itoa(len(text))+"\r\n\r\n"+text)
	}

	c.Close() //nolint:errcheck // nothing more to say
}

// admit registers a new connection, evicting the oldest idle one when the
// cap is reached. It reports false when there is no room even for health
// checks.
func (l *connLimiter) admit(c net.Conn) bool {
	l.mu.Lock()
	defer l.mu.Unlock()

	e := &connEntry{conn: c}

	if l.normal >= l.max {
		if victim := l.idle.Front(); victim != nil {
			v := victim.Value.(*connEntry) //nolint:forcetypeassert // only entries go in
			l.forget(v)
			l.evicted.Add(1)

			// tls.Conn.Close may wait to send its alert; the accept loop
			// must not.
			go v.conn.Close() //nolint:errcheck // the client will reconnect
		}
	}

	switch {
	case l.normal < l.max:
		l.normal++
	case l.overflow < l.reserve:
		l.overflow++
		l.over[e] = struct{}{}
		e.overflow.Store(true)
		l.warnFull()
	default:
		l.refused.Add(1)
		l.warnFull()

		return false
	}

	e.idle = l.idle.PushBack(e)
	l.conns[c] = e

	return true
}

// forget drops an entry and frees its slot, promoting a health-only
// connection to a normal one if any waits. l.mu is held.
func (l *connLimiter) forget(e *connEntry) {
	if _, ok := l.conns[e.conn]; !ok {
		return
	}

	delete(l.conns, e.conn)

	if e.idle != nil {
		l.idle.Remove(e.idle)
		e.idle = nil
	}

	if _, ok := l.over[e]; ok {
		delete(l.over, e)
		l.overflow--

		return
	}

	l.normal--

	for o := range l.over {
		delete(l.over, o)
		o.overflow.Store(false)
		l.overflow--
		l.normal++

		break
	}
}

func (l *connLimiter) warnFull() {
	if now := time.Now(); now.Sub(l.lastWarn) > time.Minute {
		l.lastWarn = now
		l.logger.Warn("at the connection limit: every connection is busy; new ones are only served health checks",
			"max_connections", l.max, "hint", "raise --max-connections (and the file-descriptor limit) if this is real load")
	}
}

// track is the http.Server's ConnState hook.
func (l *connLimiter) track(c net.Conn, st http.ConnState) {
	l.mu.Lock()
	defer l.mu.Unlock()

	e, ok := l.conns[c]
	if !ok {
		return
	}

	switch st {
	case http.StateActive:
		if e.idle != nil {
			l.idle.Remove(e.idle)
			e.idle = nil
		}
	case http.StateIdle:
		if e.idle != nil {
			l.idle.Remove(e.idle)
		}

		e.idle = l.idle.PushBack(e)

		// The write deadline of the last response (see deadlines) must not
		// fail what the server writes before the next handler runs.
		c.SetWriteDeadline(time.Time{}) //nolint:errcheck // a closed connection needs none
	case http.StateHijacked, http.StateClosed:
		l.forget(e)
	case http.StateNew:
	}
}

type connEntryKey struct{}

// connContext is the http.Server's ConnContext hook: requests can tell
// whether their connection is a health-only one.
func (l *connLimiter) connContext(ctx context.Context, c net.Conn) context.Context {
	l.mu.Lock()
	e := l.conns[c]
	l.mu.Unlock()

	if e == nil {
		return ctx
	}

	return context.WithValue(ctx, connEntryKey{}, e)
}

// idleCount is the number of connections with no request in flight.
func (l *connLimiter) idleCount() int {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.idle.Len()
}

// open is the number of connections admitted.
func (l *connLimiter) open() int {
	l.mu.Lock()
	defer l.mu.Unlock()

	return l.normal + l.overflow
}

// healthOnly reports whether r came on a connection admitted past the cap.
func healthOnly(r *http.Request) bool {
	e, ok := r.Context().Value(connEntryKey{}).(*connEntry)

	return ok && e.overflow.Load()
}

// isHealthCheck is what a health-only connection may ask.
func isHealthCheck(r *http.Request) bool {
	switch r.URL.Path {
	case "/healthz", "/readyz", "/grpc.health.v1.Health/Check":
		return true
	}

	return false
}

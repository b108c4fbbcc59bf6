package schematic_test

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync"
	"testing"

	"github.com/kiln-dev/kiln/internal/testfixture"
)

// factoryAnswer is what the public factory's own schematic package makes of
// a body (hack/factory-oracle): an ID and canonical form, or a refusal.
// Bytes, not strings: messages may hold cut UTF-8 sequences.
type factoryAnswer struct {
	ID        string `json:"id"`
	Canonical []byte `json:"canonical"`
	Refused   bool   `json:"refused"`
	Err       []byte `json:"err"`
	Panic     string `json:"panic"`
}

// factoryOracle is one hack/factory-oracle process, shared by the tests of
// this package (and by each fuzz worker, which is its own process). It
// exits when its stdin closes, which the kernel does for us if the test
// binary dies.
type factoryOracle struct {
	mu  sync.Mutex
	cmd *exec.Cmd
	in  io.WriteCloser
	out *bufio.Reader
	enc *json.Encoder
}

var (
	oracleOnce sync.Once
	oracle     *factoryOracle
	oracleErr  error
)

// factory returns the oracle named by KILN_FACTORY_ORACLE (make builds it).
// Under make a missing oracle fails the test; a plain `go test` skips.
func factory(tb testing.TB) *factoryOracle {
	tb.Helper()

	path := os.Getenv("KILN_FACTORY_ORACLE")
	testfixture.Require(tb, path)

	oracleOnce.Do(func() { oracle, oracleErr = startOracle(path) })

	if oracleErr != nil {
		tb.Fatalf("start the factory oracle: %v", oracleErr)
	}

	return oracle
}

func startOracle(path string) (*factoryOracle, error) {
	cmd := exec.Command(path)
	cmd.Stderr = os.Stderr

	in, err := cmd.StdinPipe()
	if err != nil {
		return nil, err
	}

	out, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}

	if err := cmd.Start(); err != nil {
		return nil, err
	}

	return &factoryOracle{cmd: cmd, in: in, out: bufio.NewReaderSize(out, 1<<20), enc: json.NewEncoder(in)}, nil
}

// ask sends one body and reads the factory's answer.
func (o *factoryOracle) ask(body []byte) (factoryAnswer, error) {
	o.mu.Lock()
	defer o.mu.Unlock()

	if err := o.enc.Encode(struct {
		In []byte `json:"in"`
	}{body}); err != nil {
		return factoryAnswer{}, fmt.Errorf("send to the factory oracle: %w", err)
	}

	line, err := o.out.ReadBytes('\n')
	if err != nil {
		return factoryAnswer{}, fmt.Errorf("read from the factory oracle: %w", err)
	}

	var a factoryAnswer
	if err := json.Unmarshal(line, &a); err != nil {
		return factoryAnswer{}, fmt.Errorf("factory oracle answer %q: %w", line, err)
	}

	return a, nil
}

func (o *factoryOracle) close() {
	_ = o.in.Close()
	_ = o.cmd.Wait()
}

func TestMain(m *testing.M) {
	code := m.Run()

	if oracle != nil {
		oracle.close()
	}

	os.Exit(code)
}

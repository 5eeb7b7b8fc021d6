// Command testenv runs a throwaway Kubernetes control plane (etcd and
// kube-apiserver, nothing else) on loopback for servicedb's tests, much like
// controller-runtime's envtest.
//
//	testenv up --dir DIR [--bin-dir BINDIR] [--timeout 90s]
//	           [--etcd-arg=--flag=value ...] [--apiserver-arg=--flag=value ...]
//
// It generates a CA, a serving certificate, an admin client certificate
// (group system:masters) and a service-account signing key under DIR/pki,
// starts etcd (data in DIR/etcd, log DIR/etcd.log) and kube-apiserver (log
// DIR/kube-apiserver.log) on free loopback ports, waits for /readyz, writes
// DIR/kubeconfig (context "servicedb-testenv") and then supervises both in
// the foreground. SIGTERM or SIGINT stops kube-apiserver, then etcd, and exits
// 0; if either dies on its own, testenv stops the other and exits 1.
// DIR/testenv.pid holds testenv's pid while it runs. DIR/kubeconfig appears
// only once the API is ready and is removed again on shutdown.
package main

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"
)

const contextName = "servicedb-testenv"

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	switch os.Args[1] {
	case "up":
		os.Exit(upCmd(os.Args[2:]))
	case "-h", "-help", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "testenv: unknown command %q\n", os.Args[1])
		usage()
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: testenv up --dir DIR [--bin-dir BINDIR] [--timeout 90s] [--etcd-arg ARG]... [--apiserver-arg ARG]...")
	os.Exit(2)
}

type multiFlag []string

func (m *multiFlag) String() string     { return strings.Join(*m, " ") }
func (m *multiFlag) Set(v string) error { *m = append(*m, v); return nil }

func upCmd(args []string) int {
	fs := flag.NewFlagSet("up", flag.ExitOnError)
	dir := fs.String("dir", "", "state directory (required)")
	binDir := fs.String("bin-dir", "", "directory holding etcd and kube-apiserver (default: testenv's own directory)")
	timeout := fs.Duration("timeout", 90*time.Second, "how long to wait for kube-apiserver's /readyz")
	var etcdArgs, apiArgs multiFlag
	fs.Var(&etcdArgs, "etcd-arg", "extra etcd argument (repeatable)")
	fs.Var(&apiArgs, "apiserver-arg", "extra kube-apiserver argument (repeatable)")
	_ = fs.Parse(args)
	if *dir == "" || fs.NArg() != 0 {
		usage()
	}
	e := &env{timeout: *timeout, etcdArgs: etcdArgs, apiArgs: apiArgs}
	var err error
	if e.dir, err = filepath.Abs(*dir); err != nil {
		return fail(err)
	}
	if e.binDir = *binDir; e.binDir == "" {
		exe, err := os.Executable()
		if err == nil {
			exe, err = filepath.EvalSymlinks(exe)
		}
		if err != nil {
			return fail(fmt.Errorf("locating own executable: %w", err))
		}
		e.binDir = filepath.Dir(exe)
	}
	if err := e.run(); err != nil {
		return fail(err)
	}
	return 0
}

func fail(err error) int {
	fmt.Fprintf(os.Stderr, "testenv: %v\n", err)
	return 1
}

func logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s testenv: %s\n", time.Now().Format("15:04:05.000"), fmt.Sprintf(format, a...))
}

type env struct {
	dir, binDir       string
	timeout           time.Duration
	etcdArgs, apiArgs []string
	pki               *pki

	etcd, apiserver *child
	apiPort         int
}

func (e *env) path(p ...string) string { return filepath.Join(append([]string{e.dir}, p...)...) }

func (e *env) run() error {
	for _, b := range []string{"etcd", "kube-apiserver"} {
		if _, err := os.Stat(filepath.Join(e.binDir, b)); err != nil {
			return fmt.Errorf("%s not found in %s (run hack/testenv/build.sh, or pass --bin-dir): %w", b, e.binDir, err)
		}
	}
	if err := os.MkdirAll(e.dir, 0o755); err != nil {
		return err
	}
	pidFile := e.path("testenv.pid")
	if pid, alive := readPid(pidFile); alive && pid != os.Getpid() {
		return fmt.Errorf("another testenv (pid %d) is running in %s", pid, e.dir)
	}
	// Stale state from an earlier run: always start from a fresh cluster.
	for _, p := range []string{"kubeconfig", "etcd", "pki", "etcd.log", "kube-apiserver.log"} {
		if err := os.RemoveAll(e.path(p)); err != nil {
			return err
		}
	}
	if err := os.WriteFile(pidFile, []byte(strconv.Itoa(os.Getpid())+"\n"), 0o644); err != nil {
		return err
	}
	defer os.Remove(pidFile)
	defer os.Remove(e.path("kubeconfig"))

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var err error
	if e.pki, err = newPKI(e.path("pki")); err != nil {
		return fmt.Errorf("generating certificates: %w", err)
	}

	// Ports are picked by binding to :0 and released again, so a parallel
	// testenv can race us for them; retry on "address already in use".
	for attempt := 1; ; attempt++ {
		err = e.start(ctx)
		if err == nil {
			break
		}
		e.stopAll()
		if ctx.Err() != nil {
			logf("interrupted during startup")
			return nil
		}
		if !errors.Is(err, errPortInUse) || attempt == 3 {
			return err
		}
		logf("port clash, retrying: %v", err)
		if err := os.RemoveAll(e.path("etcd")); err != nil {
			return err
		}
	}

	if err := e.writeKubeconfig(); err != nil {
		e.stopAll()
		return err
	}
	logf("ready: kube-apiserver https://127.0.0.1:%d, kubeconfig %s", e.apiPort, e.path("kubeconfig"))

	var died *child
	select {
	case <-ctx.Done():
	case <-e.apiserver.done:
		died = e.apiserver
	case <-e.etcd.done:
		died = e.etcd
	}
	if died != nil {
		// A terminal's Ctrl-C reaches the children as well; if our own signal
		// is right behind, this is a normal shutdown.
		select {
		case <-ctx.Done():
			died = nil
		case <-time.After(500 * time.Millisecond):
		}
	}
	if died != nil {
		e.stopAll()
		return fmt.Errorf("%s exited unexpectedly (%v); last lines of %s:\n%s", died.name, died.err, died.logPath, tail(died.logPath, 30))
	}
	logf("shutting down")
	e.stopAll()
	logf("stopped")
	return nil
}

var errPortInUse = errors.New("address already in use")

// start launches etcd and kube-apiserver on fresh ports and waits until the
// API is ready to use.
func (e *env) start(ctx context.Context) error {
	ports, err := freePorts(3)
	if err != nil {
		return err
	}
	etcdClient := fmt.Sprintf("http://127.0.0.1:%d", ports[0])
	etcdPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	e.apiPort = ports[2]

	etcdArgs := []string{
		"--name=testenv",
		"--data-dir=" + e.path("etcd"),
		"--listen-client-urls=" + etcdClient,
		"--advertise-client-urls=" + etcdClient,
		"--listen-peer-urls=" + etcdPeer,
		"--initial-advertise-peer-urls=" + etcdPeer,
		"--initial-cluster=testenv=" + etcdPeer,
		"--initial-cluster-state=new",
		"--unsafe-no-fsync=true",
	}
	if e.etcd, err = startChild("etcd", filepath.Join(e.binDir, "etcd"), append(etcdArgs, e.etcdArgs...), e.path("etcd.log")); err != nil {
		return err
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	err = e.poll(ctx, e.etcd, 30*time.Second, func() (bool, string) {
		body, code, err := get(plain, etcdClient+"/health")
		if err != nil {
			return false, err.Error()
		}
		return code == 200 && strings.Contains(body, `"health":"true"`), body
	})
	if err != nil {
		return err
	}

	p := e.pki
	apiArgs := []string{
		"--etcd-servers=" + etcdClient,
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(e.apiPort),
		"--cert-dir=" + p.dir,
		"--tls-cert-file=" + p.file("apiserver.crt"),
		"--tls-private-key-file=" + p.file("apiserver.key"),
		"--client-ca-file=" + p.file("ca.crt"),
		"--service-account-key-file=" + p.file("sa.pub"),
		"--service-account-signing-key-file=" + p.file("sa.key"),
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--authorization-mode=RBAC",
		"--service-cluster-ip-range=10.0.0.0/16", // room for a Service IP per dedicated instance at bench-scale
		"--disable-admission-plugins=ServiceAccount",
		"--allow-privileged=true",
		"--profiling=false",
		// The lease reconciler would try (and fail, every 10s) to publish
		// 127.0.0.1 as the endpoint of the default/kubernetes Service.
		"--endpoint-reconciler-type=none",
	}
	if e.apiserver, err = startChild("kube-apiserver", filepath.Join(e.binDir, "kube-apiserver"), append(apiArgs, e.apiArgs...), e.path("kube-apiserver.log")); err != nil {
		return err
	}
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs:      p.caPool,
			Certificates: []tls.Certificate{p.admin},
		}},
	}
	base := fmt.Sprintf("https://127.0.0.1:%d", e.apiPort)
	return e.poll(ctx, e.apiserver, e.timeout, func() (bool, string) {
		body, code, err := get(client, base+"/readyz?verbose")
		if err != nil {
			return false, err.Error()
		}
		if code != 200 {
			return false, failedChecks(body)
		}
		// /readyz does not wait for the bootstrap controller's namespaces.
		for _, ns := range []string{"default", "kube-system"} {
			if _, code, err := get(client, base+"/api/v1/namespaces/"+ns); err != nil || code != 200 {
				return false, "namespace " + ns + " not there yet"
			}
		}
		return true, ""
	})
}

// poll calls check until it reports ready, c exits, ctx ends or timeout passes.
func (e *env) poll(ctx context.Context, c *child, timeout time.Duration, check func() (bool, string)) error {
	deadline := time.After(timeout)
	last := ""
	for {
		ok, detail := check()
		if ok {
			return nil
		}
		last = detail
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-c.done:
			log := tail(c.logPath, 30)
			err := fmt.Errorf("%s exited during startup (%v); last lines of %s:\n%s", c.name, c.err, c.logPath, log)
			if strings.Contains(log, "address already in use") {
				err = fmt.Errorf("%w: %w", errPortInUse, err)
			}
			return err
		case <-deadline:
			return fmt.Errorf("%s not ready after %s (last check: %s); last lines of %s:\n%s",
				c.name, timeout, strings.TrimSpace(last), c.logPath, tail(c.logPath, 30))
		case <-time.After(250 * time.Millisecond):
		}
	}
}

func (e *env) stopAll() {
	for _, c := range []*child{e.apiserver, e.etcd} {
		if c != nil {
			c.stop(20 * time.Second)
		}
	}
}

func get(c *http.Client, url string) (string, int, error) {
	resp, err := c.Get(url)
	if err != nil {
		return "", 0, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	return string(b), resp.StatusCode, err
}

// failedChecks keeps only the failing "[-]..." lines of a verbose /readyz body.
func failedChecks(body string) string {
	var failed []string
	for _, l := range strings.Split(body, "\n") {
		if strings.HasPrefix(l, "[-]") {
			failed = append(failed, l)
		}
	}
	if len(failed) == 0 {
		return body
	}
	return strings.Join(failed, "; ")
}

func freePorts(n int) ([]int, error) {
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		defer l.Close() // hold all n open so they are distinct
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

func readPid(path string) (int, bool) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, false
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0, false
	}
	p, err := os.FindProcess(pid)
	if err != nil {
		return pid, false
	}
	return pid, p.Signal(syscall.Signal(0)) == nil
}

// child is a supervised process whose output goes to a log file.
type child struct {
	name, logPath string
	cmd           *exec.Cmd
	done          chan struct{}
	err           error // valid once done is closed
}

func startChild(name, bin string, args []string, logPath string) (*child, error) {
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(f, "==== %s testenv: starting %s %s\n", time.Now().Format(time.RFC3339), bin, strings.Join(args, " "))
	c := &child{name: name, logPath: logPath, cmd: exec.Command(bin, args...), done: make(chan struct{})}
	c.cmd.Stdout, c.cmd.Stderr = f, f
	if err := c.cmd.Start(); err != nil {
		f.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	logf("started %s (pid %d), log %s", name, c.cmd.Process.Pid, logPath)
	go func() {
		c.err = c.cmd.Wait()
		f.Close()
		close(c.done)
	}()
	return c, nil
}

// stop sends SIGTERM, and SIGKILL if c has not exited after grace.
func (c *child) stop(grace time.Duration) {
	select {
	case <-c.done:
		return
	default:
	}
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
		logf("%s stopped", c.name)
	case <-time.After(grace):
		logf("%s did not stop within %s, killing it", c.name, grace)
		_ = c.cmd.Process.Kill()
		<-c.done
	}
}

func tail(path string, lines int) string {
	f, err := os.Open(path)
	if err != nil {
		return "(" + err.Error() + ")"
	}
	defer f.Close()
	const max = 64 << 10
	if st, err := f.Stat(); err == nil && st.Size() > max {
		_, _ = f.Seek(-max, io.SeekEnd)
	}
	b, _ := io.ReadAll(f)
	// Only the latest attempt: startChild heads each one with a "==== " line.
	if i := bytes.LastIndex(b, []byte("\n==== ")); i >= 0 {
		b = b[i+1:]
	}
	ls := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(ls) > lines {
		ls = ls[len(ls)-lines:]
	}
	return "    " + strings.Join(ls, "\n    ")
}

// pki holds the generated certificates and keys; files live in dir.
type pki struct {
	dir                 string
	caPool              *x509.CertPool
	caPEM               []byte
	admin               tls.Certificate
	adminCert, adminKey []byte // PEM
	caCert              *x509.Certificate
	caKey               crypto.Signer
}

func (p *pki) file(name string) string { return filepath.Join(p.dir, name) }

func newPKI(dir string) (*pki, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	p := &pki{dir: dir}
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	caTmpl := &x509.Certificate{
		Subject:               pkix.Name{CommonName: "servicedb-testenv-ca"},
		IsCA:                  true,
		BasicConstraintsValid: true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
	}
	caDER, err := p.sign(caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, err
	}
	if p.caCert, err = x509.ParseCertificate(caDER); err != nil {
		return nil, err
	}
	p.caKey = caKey
	p.caPEM = pemBlock("CERTIFICATE", caDER)
	p.caPool = x509.NewCertPool()
	p.caPool.AddCert(p.caCert)
	if err := p.write("ca.crt", p.caPEM); err != nil {
		return nil, err
	}
	if err := p.writeKey("ca.key", caKey); err != nil {
		return nil, err
	}

	srvCert, srvKey, err := p.leaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "kube-apiserver"},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		DNSNames: []string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, net.IPv4(10, 0, 0, 1)},
	})
	if err != nil {
		return nil, err
	}
	if err := p.write("apiserver.crt", srvCert); err != nil {
		return nil, err
	}
	if err := p.write("apiserver.key", srvKey); err != nil {
		return nil, err
	}

	p.adminCert, p.adminKey, err = p.leaf(&x509.Certificate{
		Subject:     pkix.Name{CommonName: "servicedb-testenv-admin", Organization: []string{"system:masters"}},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	})
	if err != nil {
		return nil, err
	}
	if p.admin, err = tls.X509KeyPair(p.adminCert, p.adminKey); err != nil {
		return nil, err
	}
	if err := p.write("admin.crt", p.adminCert); err != nil {
		return nil, err
	}
	if err := p.write("admin.key", p.adminKey); err != nil {
		return nil, err
	}

	saKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	if err := p.writeKey("sa.key", saKey); err != nil {
		return nil, err
	}
	pubDER, err := x509.MarshalPKIXPublicKey(&saKey.PublicKey)
	if err != nil {
		return nil, err
	}
	return p, p.write("sa.pub", pemBlock("PUBLIC KEY", pubDER))
}

// leaf issues a CA-signed certificate for a fresh P-256 key.
func (p *pki) leaf(tmpl *x509.Certificate) (certPEM, keyPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := p.sign(tmpl, p.caCert, &key.PublicKey, p.caKey)
	if err != nil {
		return nil, nil, err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pemBlock("CERTIFICATE", der), pemBlock("PRIVATE KEY", keyDER), nil
}

func (p *pki) sign(tmpl, parent *x509.Certificate, pub crypto.PublicKey, signer crypto.Signer) ([]byte, error) {
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, err
	}
	tmpl.SerialNumber = serial
	tmpl.NotBefore = time.Now().Add(-time.Hour)
	tmpl.NotAfter = time.Now().AddDate(1, 0, 0)
	return x509.CreateCertificate(rand.Reader, tmpl, parent, pub, signer)
}

func (p *pki) write(name string, data []byte) error {
	return os.WriteFile(p.file(name), data, 0o600)
}

func (p *pki) writeKey(name string, key *ecdsa.PrivateKey) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	return p.write(name, pemBlock("PRIVATE KEY", der))
}

func pemBlock(typ string, der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
}

// writeKubeconfig atomically writes DIR/kubeconfig with the admin identity.
func (e *env) writeKubeconfig() error {
	b64 := base64.StdEncoding.EncodeToString
	var buf bytes.Buffer
	fmt.Fprintf(&buf, `apiVersion: v1
kind: Config
clusters:
- name: %[1]s
  cluster:
    server: https://127.0.0.1:%[2]d
    certificate-authority-data: %[3]s
users:
- name: %[1]s-admin
  user:
    client-certificate-data: %[4]s
    client-key-data: %[5]s
contexts:
- name: %[1]s
  context:
    cluster: %[1]s
    user: %[1]s-admin
    namespace: default
current-context: %[1]s
preferences: {}
`, contextName, e.apiPort, b64(e.pki.caPEM), b64(e.pki.adminCert), b64(e.pki.adminKey))
	tmp := e.path("kubeconfig.tmp")
	if err := os.WriteFile(tmp, buf.Bytes(), 0o600); err != nil {
		return err
	}
	return os.Rename(tmp, e.path("kubeconfig"))
}

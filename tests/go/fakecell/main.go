// A minimal Cell that links to Core the way the Go framework does (cell-protocol.md §1-2):
// sonar discovery (optional), kcp-go with FEC 10/3 and no encryption, the ConnectionOpenedEvent
// handshake, JSON documents written whole (kcp-go cuts them into mss pieces) and read back by
// parsing the accumulated buffer after every read, a keepalive every 3 s, status reports, and
// an answer to every request. It prints what happens as one JSON object per line on stdout, for
// the interop test to follow. Build it in GOPATH mode against Debian's golang-github-xtaci-kcp-dev.
package main

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"flag"
	"fmt"
	"math/rand"
	"net"
	"os"
	"os/signal"
	"strings"
	"sync"
	"syscall"
	"time"

	kcp "github.com/xtaci/kcp-go"
)

const (
	idKeepAlive     = 0x020102
	idOpened        = 0x030102
	idClosed        = 0x040102
	idStatusReport  = 0x050302
	kindMask        = 0xff
	kindRequest     = 0
	kindResponse    = 1
	keyName         = 0
	keyType         = 1
	keyCore         = 2
	keyMemory       = 3
	keyDisk         = 4
	keyUsage        = 5
	keyIO           = 6
	keySpeed        = 7
	keySize         = 34
	keyData         = 67
	serviceCore     = 0
	serviceCell     = 1
	receiveBuffer   = 2 << 20 // the framework's DefaultBufferSize
	keepAlivePeriod = 3 * time.Second
)

// message mirrors the framework's JsonMessage and its Go typing.
type message struct {
	ID                uint32              `json:"id"`
	Success           bool                `json:"success,omitempty"`
	From              uint32              `json:"from,omitempty"`
	To                uint32              `json:"to,omitempty"`
	Transaction       uint32              `json:"transaction,omitempty"`
	Error             string              `json:"error,omitempty"`
	BoolParams        map[uint32]bool     `json:"bool_params,omitempty"`
	StringParams      map[uint32]string   `json:"string_params,omitempty"`
	UIntParams        map[uint32]uint64   `json:"uint_params,omitempty"`
	IntParams         map[uint32]int64    `json:"int_params,omitempty"`
	FloatParams       map[uint32]float64  `json:"float_params,omitempty"`
	UIntArrayParams   map[uint32][]uint64 `json:"uint_array_params,omitempty"`
	StringArrayParams map[uint32][]string `json:"string_array_params,omitempty"`
}

var printLock sync.Mutex

func report(event string, fields map[string]interface{}) {
	if fields == nil {
		fields = map[string]interface{}{}
	}
	fields["event"] = event
	line, _ := json.Marshal(fields)
	printLock.Lock()
	defer printLock.Unlock()
	fmt.Println(string(line))
}

func fail(format string, args ...interface{}) {
	report("error", map[string]interface{}{"reason": fmt.Sprintf(format, args...)})
	os.Exit(1)
}

type sonar struct {
	Type      int       `json:"type"`
	ID        int       `json:"id"`
	Domain    string    `json:"domain,omitempty"`
	Requestor string    `json:"requestor,omitempty"`
	Services  []service `json:"services,omitempty"`
}

type service struct {
	Type     string `json:"type"`
	Protocol string `json:"protocol"`
	Address  string `json:"address"`
	Port     int    `json:"port"`
}

// discover pings group:port and reads echoes on group:port-1, as sonar's pinger does: any
// datagram whose id is not that of the latest ping makes it ping again with a new id.
func discover(group string, port int, domain string, iface string, timeout time.Duration) string {
	var ifi *net.Interface
	if iface != "" {
		var err error
		if ifi, err = net.InterfaceByName(iface); err != nil {
			fail("interface %s: %v", iface, err)
		}
	}
	listen, err := net.ListenMulticastUDP("udp4", ifi, &net.UDPAddr{IP: net.ParseIP(group), Port: port - 1})
	if err != nil {
		fail("listen for echoes: %v", err)
	}
	defer listen.Close()
	sender, err := net.DialUDP("udp4", nil, &net.UDPAddr{IP: net.ParseIP(group), Port: port})
	if err != nil {
		fail("ping socket: %v", err)
	}
	defer sender.Close()
	deadline := time.Now().Add(timeout)
	buffer := make([]byte, 8<<10)
	for time.Now().Before(deadline) {
		ping := sonar{Type: 0, ID: rand.Intn(65535), Domain: domain}
		data, _ := json.Marshal(ping)
		if _, err := sender.Write(data); err != nil {
			fail("ping: %v", err)
		}
		listen.SetReadDeadline(deadline)
		n, _, err := listen.ReadFromUDP(buffer)
		if err != nil {
			break
		}
		var echo sonar
		if json.Unmarshal(buffer[:n], &echo) != nil || echo.ID != ping.ID {
			continue
		}
		for _, s := range echo.Services {
			if s.Type == "core" {
				report("discovered", map[string]interface{}{"requestor": echo.Requestor, "address": s.Address, "port": s.Port, "protocol": s.Protocol})
				return fmt.Sprintf("%s:%d", s.Address, s.Port)
			}
		}
	}
	fail("no echo within %s", timeout)
	return ""
}

type cell struct {
	name      string
	session   *kcp.UDPSession
	outgoing  chan message
	replySize int
}

func (c *cell) send(m message) {
	c.outgoing <- m
}

// writer drains the queue so that one document's pieces are never interleaved with another's.
func (c *cell) writer() {
	for m := range c.outgoing {
		data, err := json.Marshal(m)
		if err != nil {
			fail("encode %d: %v", m.ID, err)
		}
		if _, err := c.session.Write(data); err != nil {
			fail("write: %v", err)
		}
	}
}

// reader appends every KCP message to one buffer and parses it after each, as the framework.
func (c *cell) reader() {
	buffer := make([]byte, receiveBuffer)
	filled := 0
	for {
		n, err := c.session.Read(buffer[filled:])
		if err != nil {
			fail("read: %v", err)
		}
		filled += n
		var m message
		if json.Unmarshal(buffer[:filled], &m) != nil {
			if filled == len(buffer) {
				fail("receive buffer full without a document")
			}
			continue
		}
		filled = 0
		c.handle(m)
	}
}

func (c *cell) handle(m message) {
	switch {
	case m.ID == idKeepAlive:
		report("keepalive", nil)
	case m.ID == idClosed:
		report("closed", map[string]interface{}{"gracefully": true})
		os.Exit(0)
	case m.ID&kindMask == kindRequest:
		payload := m.StringParams[keyData]
		digest := sha256.Sum256([]byte(payload))
		report("request", map[string]interface{}{"id": m.ID, "size": len(payload), "sha256": hex.EncodeToString(digest[:])})
		reply := message{
			ID:           m.ID&^kindMask | kindResponse,
			Success:      true,
			To:           m.From,
			StringParams: map[uint32]string{keyData: hex.EncodeToString(digest[:])},
			UIntParams:   map[uint32]uint64{keySize: uint64(len(payload))},
		}
		if size := int(m.UIntParams[keySize]); size > 0 {
			reply.StringArrayParams = map[uint32][]string{keyData: filler(size)}
		}
		c.send(reply)
	default:
		report("message", map[string]interface{}{"id": m.ID})
	}
}

// filler is about size bytes of text, as many paths of 1,000 characters.
func filler(size int) []string {
	items := make([]string, 0, size/1000+1)
	for i := 0; size > 0; i++ {
		n := 1000
		if size < n {
			n = size
		}
		items = append(items, fmt.Sprintf("%08d", i)+strings.Repeat("x", n))
		size -= n
	}
	return items
}

func (c *cell) status() message {
	return message{
		ID:          idStatusReport,
		UIntParams:  map[uint32]uint64{keyCore: 4},
		FloatParams: map[uint32]float64{keyUsage: 12.5},
		UIntArrayParams: map[uint32][]uint64{
			keyMemory: {6 << 30, 8 << 30},
			keyDisk:   {100 << 30, 200 << 30},
			keyIO:     {0, 0, 0, 0},
			keySpeed:  {0, 0, 0, 0},
		},
	}
}

func main() {
	core := flag.String("core", "", "Core's KCP address host:port (instead of discovery)")
	name := flag.String("name", "Cell_0000000000aa", "this Cell's name")
	reportEvery := flag.Duration("report", 2*time.Second, "status report interval")
	group := flag.String("group", "224.0.0.226", "discovery group address")
	groupPort := flag.Int("group-port", 5599, "discovery group port")
	domain := flag.String("domain", "nano", "discovery domain")
	iface := flag.String("interface", "", "interface for discovery (default: the system's)")
	flag.Parse()
	rand.Seed(time.Now().UnixNano())

	address := *core
	if address == "" {
		address = discover(*group, *groupPort, *domain, *iface, 5*time.Second)
	}
	session, err := kcp.DialWithOptions(address, nil, 10, 3)
	if err != nil {
		fail("dial %s: %v", address, err)
	}
	c := &cell{name: *name, session: session, outgoing: make(chan message, 1024)}

	// The handshake: our name first, then exactly one read that must hold Core's.
	opened := message{ID: idOpened, StringParams: map[uint32]string{keyName: c.name}, UIntParams: map[uint32]uint64{keyType: serviceCell}}
	data, _ := json.Marshal(opened)
	if _, err := session.Write(data); err != nil {
		fail("write handshake: %v", err)
	}
	buffer := make([]byte, receiveBuffer)
	n, err := session.Read(buffer)
	if err != nil {
		fail("read handshake: %v", err)
	}
	var reply message
	if err := json.Unmarshal(buffer[:n], &reply); err != nil {
		fail("handshake: %v", err)
	}
	if reply.ID != idOpened || reply.UIntParams[keyType] != serviceCore {
		fail("handshake: unexpected message %d type %d", reply.ID, reply.UIntParams[keyType])
	}
	report("opened", map[string]interface{}{"core": reply.StringParams[keyName], "conv": session.GetConv()})

	go c.writer()
	go c.reader()
	c.send(c.status())
	keepalive := time.NewTicker(keepAlivePeriod)
	status := time.NewTicker(*reportEvery)
	stop := make(chan os.Signal, 1)
	signal.Notify(stop, syscall.SIGTERM, syscall.SIGINT)
	for {
		select {
		case <-keepalive.C:
			c.send(message{ID: idKeepAlive})
		case <-status.C:
			c.send(c.status())
		case <-stop:
			// The framework's goodbye: written straight onto the session, a moment for KCP
			// to deliver it, then close.
			data, _ := json.Marshal(message{ID: idClosed})
			session.Write(data)
			time.Sleep(200 * time.Millisecond)
			report("stopped", nil)
			os.Exit(0)
		}
	}
}

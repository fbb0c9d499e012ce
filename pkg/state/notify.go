package state

// BucketNotify holds the notification channels, keyed by channel name. Their secrets (an SMTP
// password, a webhook's signing secret) are stored here and nowhere else.
const BucketNotify = "notify"

// Notification channel types.
const (
	NotifyEmail   = "email"
	NotifySNMP    = "snmp"
	NotifyWebhook = "webhook"
)

// NotifyChannel is one destination of kvmctl's notifications (seed 002: "email/SNMP trap
// notification"), its fields by Type; pkg/notify checks them and sends. Password and Secret
// are secrets: they live only in the state file (mode 0600) and are never printed.
type NotifyChannel struct {
	Name string `json:"name"`
	// Type is email, snmp or webhook.
	Type string `json:"type"`

	// SMTP is the mail server's host:port; From the sender; To the recipients.
	SMTP string   `json:"smtp,omitempty"`
	From string   `json:"from,omitempty"`
	To   []string `json:"to,omitempty"`
	// Username and Password log in to the mail server (AUTH PLAIN).
	Username string `json:"username,omitempty"`
	Password string `json:"password,omitempty"`
	// StartTLS requires the mail server to switch to TLS before anything else is sent.
	StartTLS bool `json:"starttls,omitempty"`

	// Target is the SNMP trap receiver's host:port; Community the SNMPv2c community.
	Target    string `json:"target,omitempty"`
	Community string `json:"community,omitempty"`

	// URL receives the webhook's POST; Secret signs its body (HMAC-SHA256).
	URL    string `json:"url,omitempty"`
	Secret string `json:"secret,omitempty"`

	// CAFile is a PEM file of the certificate authorities that the mail server's STARTTLS or
	// the webhook's HTTPS certificate must chain to; empty means the system's.
	CAFile string `json:"ca_file,omitempty"`

	// Unknown keeps fields a newer kvmctl wrote.
	Unknown Unknown `json:"-"`
}

// UnmarshalJSON reads a channel, keeping the fields this version does not know.
func (c *NotifyChannel) UnmarshalJSON(data []byte) (err error) {
	type plain NotifyChannel
	c.Unknown, err = UnmarshalKeeping(data, (*plain)(c))
	return err
}

// MarshalJSON writes a channel with the fields it kept.
func (c NotifyChannel) MarshalJSON() ([]byte, error) {
	type plain NotifyChannel
	return MarshalKeeping(plain(c), c.Unknown)
}

// GetNotifyChannel returns the channel called name, or ErrNotFound.
func GetNotifyChannel(tx Tx, name string) (NotifyChannel, error) {
	var c NotifyChannel
	return c, GetJSON(tx, BucketNotify, name, &c)
}

// PutNotifyChannel writes c under its name.
func PutNotifyChannel(tx Tx, c NotifyChannel) error { return PutJSON(tx, BucketNotify, c.Name, c) }

// DeleteNotifyChannel removes the channel called name; an absent one is not an error.
func DeleteNotifyChannel(tx Tx, name string) error { return tx.Delete(BucketNotify, name) }

// NotifyChannels lists every channel by name.
func NotifyChannels(tx Tx) ([]NotifyChannel, error) { return ListJSON[NotifyChannel](tx, BucketNotify) }

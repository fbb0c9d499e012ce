package cli

import (
	"context"

	"github.com/kvmctl/kvmctl/pkg/cmdutil"
	"github.com/kvmctl/kvmctl/pkg/events"
	"github.com/kvmctl/kvmctl/pkg/fence"
	"github.com/kvmctl/kvmctl/pkg/notify"
	"github.com/kvmctl/kvmctl/pkg/state"
)

// fenceNotifier is the fence path's notifier (fence.Service.Notify): it tells every channel of
// the state file. The channels are read for each notice, so that one added while a long
// `ha watch` runs counts, and the file is closed again before anything is sent.
func fenceNotifier(f *cmdutil.Factory) fence.Notifier { return fenceNotices{f: f} }

type fenceNotices struct{ f *cmdutil.Factory }

// Notify sends n to every channel and returns their failures joined; each channel is bounded
// by notify.DefaultLimits.
func (fn fenceNotices) Notify(ctx context.Context, n fence.Notice) error {
	var nf *notify.Notifier
	err := view(fn.f, func(tx state.Tx) (err error) {
		nf, err = notify.Load(tx, notify.Options{Clock: fn.f.Clock})
		return err
	})
	if err != nil {
		return err
	}
	return nf.Notify(ctx, noticeOfFence(n))
}

// noticeOfFence says a fence notice in notify's words: a result whose action failed is
// fence.failed, the rate cap's refusal fence.cap_reached, any
// other result fence.action.
func noticeOfFence(n fence.Notice) notify.Notice {
	out := notify.Notice{Kind: notify.Kind(n.Kind), Time: n.Time, AuditID: n.AuditID, Host: n.Host, Cluster: n.Cluster,
		Action: string(n.Action), Result: n.Result, Message: n.Message}
	switch n.Kind {
	case events.FenceResult:
		out.Kind = notify.KindFenceAction
		if n.Failed {
			out.Kind = notify.KindFenceFailed
		}
	case events.FenceRefused:
		if n.CapReached {
			out.Kind = notify.KindFenceCapReached
		}
	}
	return out
}

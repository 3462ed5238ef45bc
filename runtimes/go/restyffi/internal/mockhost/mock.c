/* A host for unit tests: the contract's functions over a locked list of tasks. */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "mock.h"

void mock_queue_init(mock_queue *q)
{
    memset(q, 0, sizeof(*q));
    pthread_mutex_init(&q->mu, NULL);
    pthread_cond_init(&q->cv, NULL);
}

void mock_post(mock_queue *q, mock_task *t)
{
    pthread_mutex_lock(&q->mu);
    t->next = NULL;
    if (q->tail) {
        q->tail->next = t;
    } else {
        q->head = t;
    }
    q->tail = t;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void mock_finish(mock_queue *q)
{
    pthread_mutex_lock(&q->mu);
    q->finishing = 1;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

void *mock_task_poll(void *tq)
{
    mock_queue *q = tq;
    mock_task *t;
    pthread_mutex_lock(&q->mu);
    while (q->head == NULL && !q->finishing) {
        pthread_cond_wait(&q->cv, &q->mu);
    }
    t = q->head;
    if (t) {
        q->head = t->next;
        if (q->head == NULL) {
            q->tail = NULL;
        }
        t->queue = q;
    } else {
        q->finished = 1;
    }
    pthread_mutex_unlock(&q->mu);
    return t;
}

char *mock_get_req(void *task, int *len)
{
    mock_task *t = task;
    if (len) {
        *len = t->len;
    }
    return t->req;
}

void mock_respond(void *task, int rc, char *rsp, int rsp_len)
{
    mock_task *t = task;
    mock_queue *q = t->queue;
    pthread_mutex_lock(&q->mu);
    t->answers++;
    t->rc = rc;
    t->rsp = rsp;
    t->rsp_len = rsp_len;
    pthread_cond_broadcast(&q->cv);
    pthread_mutex_unlock(&q->mu);
}

int mock_task_cancelled(void *task)
{
    return __atomic_load_n(&((mock_task *) task)->cancelled, __ATOMIC_ACQUIRE);
}

void mock_cancel(mock_task *t)
{
    __atomic_store_n(&t->cancelled, 1, __ATOMIC_RELEASE);
}

int mock_wait(mock_queue *q, mock_task *t)
{
    pthread_mutex_lock(&q->mu);
    while (t->answers == 0) {
        pthread_cond_wait(&q->cv, &q->mu);
    }
    int n = t->answers;
    pthread_mutex_unlock(&q->mu);
    return n;
}

int mock_is_finished(mock_queue *q)
{
    pthread_mutex_lock(&q->mu);
    int f = q->finished;
    pthread_mutex_unlock(&q->mu);
    return f;
}

void *mock_fn_poll(void) { return (void *) mock_task_poll; }
void *mock_fn_get_req(void) { return (void *) mock_get_req; }
void *mock_fn_respond(void) { return (void *) mock_respond; }
void *mock_fn_cancelled(void) { return (void *) mock_task_cancelled; }

#ifndef RESTYFFI_MOCK_H
#define RESTYFFI_MOCK_H
#include <pthread.h>

typedef struct mock_task {
    char *req;
    int len;
    int cancelled;
    int answers;
    int rc;
    char *rsp;
    int rsp_len;
    struct mock_queue *queue;
    struct mock_task *next;
} mock_task;

typedef struct mock_queue {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    mock_task *head, *tail;
    int finishing, finished;
} mock_queue;

void mock_queue_init(mock_queue *q);
void mock_post(mock_queue *q, mock_task *t);
void mock_finish(mock_queue *q);
void mock_cancel(mock_task *t);
int mock_wait(mock_queue *q, mock_task *t);
int mock_is_finished(mock_queue *q);
void *mock_task_poll(void *tq);
char *mock_get_req(void *task, int *len);
void mock_respond(void *task, int rc, char *rsp, int rsp_len);
int mock_task_cancelled(void *task);
void *mock_fn_poll(void);
void *mock_fn_get_req(void);
void *mock_fn_respond(void);
void *mock_fn_cancelled(void);
#endif
